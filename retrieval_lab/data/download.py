"""Fetch BEIR datasets from their public address when they are not on disk."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# The md5 of each archive at BEIR_URL, as BEIR's README publishes them.
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4", "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d", "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114", "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99", "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78", "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c", "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03", "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}  # fmt: skip


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable."""


@contextlib.contextmanager
def node_lock(path: Path):
    """An exclusive ``flock`` on ``path``: processes of one machine (DDP ranks, sweep jobs) take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_beir_dataset(
    name: str,
    beir_root: Path,
    download: bool = True,
    timeout: float = 30.0,
    url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Return ``beir_root/name``, downloading and unpacking it first if it is missing.

    Once per machine: the download runs under a file lock beside the target, so of several processes (DDP
    ranks, sweep jobs) one downloads and the others wait, then find the folder. The archive is checked against
    ``md5`` (by default BEIR's published checksum of its own address; an unknown one is logged and recorded),
    unpacked into a temporary folder beside the target and renamed into place, so an interrupted or corrupt
    download never leaves a half-written dataset behind. ``url``: ``{name}`` is filled in (BEIR's by default).
    """
    folder = beir_root / name
    if (folder / "corpus.jsonl").exists():
        return folder
    hint = f"put the dataset at {folder} or set RETRIEVAL_LAB_DATA to a folder holding beir/{name}/"
    if not download:
        raise DatasetUnavailableError(f"BEIR dataset {name!r} not found at {folder}; {hint}.")
    if md5 is None and url is None:
        md5 = BEIR_MD5.get(name)
    url = (url or BEIR_URL).format(name=name)
    with node_lock(beir_root / f".{name}.lock"):
        if (folder / "corpus.jsonl").exists():  # another process downloaded it while this one waited
            log.info("BEIR dataset %s: downloaded by another process", name)
            return folder
        log.info("Downloading BEIR dataset %s from %s", name, url)
        with tempfile.TemporaryDirectory(dir=beir_root, prefix=f".{name}.") as tmp:
            archive = Path(tmp) / f"{name}.zip"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
                    shutil.copyfileobj(response, out)
            except (urllib.error.URLError, OSError) as err:
                raise DatasetUnavailableError(
                    f"BEIR dataset {name!r} is not at {folder} and downloading {url} failed ({err}); {hint}."
                ) from err
            got = file_md5(archive)
            if md5 is not None and got != md5.lower():
                raise DatasetUnavailableError(
                    f"{url}: the archive's md5 is {got}, expected {md5} (data.download_md5): a corrupt or changed "
                    "download; nothing was unpacked"
                )
            if md5 is None:
                log.warning("%s: no checksum to verify against (data.download_md5); its md5 is %s", url, got)
            try:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            except zipfile.BadZipFile as err:
                raise DatasetUnavailableError(f"{url}: not a zip archive ({err})") from err
            unpacked = Path(tmp) / name
            if not (unpacked / "corpus.jsonl").exists():
                raise DatasetUnavailableError(f"{url} did not contain {name}/corpus.jsonl")
            (unpacked / ".download.json").write_text(json.dumps({"url": url, "md5": got}) + "\n", encoding="utf-8")
            unpacked.rename(folder)
    return folder
