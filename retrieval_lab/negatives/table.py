"""The versioned negatives table: what the index refresh publishes and the ANN sampler reads.

A folder holds ``table-v00001.json``, ``table-v00002.json``, ... and a ``LATEST`` file naming the newest
version. ``publish`` writes the table under a temporary name, flushes it to disk and renames it into place
(``os.replace`` is atomic on POSIX), and only then points ``LATEST`` at it, again through a rename. A reader
that follows ``LATEST`` therefore only ever opens complete tables, whatever process wrote them, and checking
for a new version costs one read of a few bytes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_lab.utils.io import atomic_write_text

log = logging.getLogger(__name__)

LATEST = "LATEST"


@dataclass(frozen=True)
class NegativesTable:
    """For each training query, document ids ranked best first (positives already removed)."""

    version: int
    negatives: dict[str, list[str]]
    meta: dict = field(default_factory=dict)


def table_path(folder: str | Path, version: int) -> Path:
    return Path(folder) / f"table-v{version:05d}.json"


def latest_version(folder: str | Path) -> int | None:
    """The version ``LATEST`` names, or None where nothing was published yet."""
    try:
        return int((Path(folder) / LATEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def write(folder: str | Path, version: int, negatives: dict[str, list[str]], meta: dict | None = None) -> Path:
    """Write table ``version`` without making it the latest (``promote`` does). Versions only grow: one not
    newer than the latest is refused, so a late writer can never replace a newer table.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = latest_version(folder)
    if version < 1 or (current is not None and version <= current):
        raise ValueError(f"negatives table version {version} is not newer than the latest ({current}) in {folder}")
    path = table_path(folder, version)
    atomic_write_text(path, json.dumps({"version": version, "meta": meta or {}, "negatives": negatives}), durable=True)
    return path


def promote(folder: str | Path, version: int) -> None:
    """Point ``LATEST`` at an already written table."""
    if not table_path(folder, version).exists():
        raise FileNotFoundError(f"cannot promote negatives table {version}: {table_path(folder, version)} is missing")
    atomic_write_text(Path(folder) / LATEST, f"{version}\n")


def publish(folder: str | Path, version: int, negatives: dict[str, list[str]], meta: dict | None = None) -> Path:
    """Write table ``version`` and make it the latest."""
    path = write(folder, version, negatives, meta)
    promote(folder, version)
    return path


def load(folder: str | Path, version: int) -> NegativesTable:
    data = json.loads(table_path(folder, version).read_text(encoding="utf-8"))
    if data["version"] != version:
        raise ValueError(f"{table_path(folder, version)} holds version {data['version']}, not {version}")
    return NegativesTable(version, data["negatives"], data["meta"])


def prune(folder: str | Path, keep_upto: int) -> list[int]:
    """Remove the tables newer than ``keep_upto`` and point ``LATEST`` back at it (or remove ``LATEST`` when
    ``keep_upto`` is 0). A run resumed from a checkpoint calls this so it does not train on tables its
    interrupted predecessor published after that checkpoint. Returns the removed versions.
    """
    folder = Path(folder)
    removed = sorted(int(p.stem.split("-v")[1]) for p in folder.glob("table-v*.json"))
    removed = [v for v in removed if v > keep_upto]
    if keep_upto > 0:
        if not table_path(folder, keep_upto).exists():
            raise FileNotFoundError(f"cannot resume on negatives table {keep_upto}: {table_path(folder, keep_upto)}")
        atomic_write_text(folder / LATEST, f"{keep_upto}\n")
    else:
        (folder / LATEST).unlink(missing_ok=True)
    for version in removed:  # after LATEST moved back, so no reader follows it to a removed file
        table_path(folder, version).unlink()
    if removed:
        log.warning("Removed negatives tables %s from %s (newer than version %d)", removed, folder, keep_upto)
    return removed
