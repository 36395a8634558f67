"""Fetch BEIR datasets from their public address when they are not on disk."""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable."""


def ensure_beir_dataset(name: str, beir_root: Path, download: bool = True, timeout: float = 30.0) -> Path:
    """Return ``beir_root/name``, downloading and unpacking it first if it is missing.

    The archive is unpacked into a temporary folder beside the target and renamed into place, so an
    interrupted download never leaves a half-written dataset behind.
    """
    folder = beir_root / name
    if (folder / "corpus.jsonl").exists():
        return folder
    url = BEIR_URL.format(name=name)
    hint = f"put the dataset at {folder} or set RETRIEVAL_LAB_DATA to a folder holding beir/{name}/"
    if not download:
        raise DatasetUnavailableError(f"BEIR dataset {name!r} not found at {folder}; {hint}.")
    log.info("Downloading BEIR dataset %s from %s", name, url)
    beir_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=beir_root, prefix=f".{name}.") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as err:
            raise DatasetUnavailableError(
                f"BEIR dataset {name!r} is not at {folder} and downloading {url} failed ({err}); {hint}."
            ) from err
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        unpacked = Path(tmp) / name
        if not (unpacked / "corpus.jsonl").exists():
            raise DatasetUnavailableError(f"{url} did not contain {name}/corpus.jsonl")
        unpacked.rename(folder)
    return folder
