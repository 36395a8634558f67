"""Sentence-similarity datasets (pairs of sentences with a graded similarity): STS Benchmark and SICK-R.

Readers follow ``../shared/data/PROVENANCE.md``:

- STS-B (``sts-{train,dev,test}.csv``): no header, tab-separated ``genre, file, year, id, score, sentence1,
  sentence2`` and sometimes two trailing source fields. Read by splitting on tabs, never with CSV quoting (252
  train lines hold an unbalanced ``"``, which CSV quoting would merge into the next rows). Score in [0, 5].
- SICK (``SICK.txt``): a header, CRLF line endings, 12 tab-separated fields; ``SemEval_set`` TRAIN / TRIAL /
  TEST become the train / dev / test splits; ``relatedness_score`` in [1, 5] is SICK-R's score.

A line with too few fields, a score that is not a number or lies outside the scale, an empty sentence or an
unknown SICK set is an error naming the file and line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from retrieval_lab.data.beir import DataFormatError, utf8_lines

log = logging.getLogger(__name__)
STSB_SPLITS = ("train", "dev", "test")
SICK_SETS = {"TRAIN": "train", "TRIAL": "dev", "TEST": "test"}
SICK_HEADER = ("pair_ID", "sentence_A", "sentence_B", "entailment_label", "relatedness_score")


@dataclass(frozen=True)
class StsPair:
    sentence1: str
    sentence2: str
    score: float


@dataclass
class StsDataset:
    name: str
    splits: dict[str, list[StsPair]]  # split -> its pairs, in file order


def _score(text: str, low: float, high: float, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(f"{path}:{line}: score {text!r} is not a number") from None
    if not low <= value <= high:
        raise DataFormatError(f"{path}:{line}: score {value} outside [{low:g}, {high:g}]")
    return value


def _pair(first: str, second: str, score: float, path: Path, line: int) -> StsPair:
    if not first.strip() or not second.strip():
        raise DataFormatError(f"{path}:{line}: empty sentence")
    return StsPair(first.strip(), second.strip(), score)


def _lines(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; set RETRIEVAL_LAB_DATA or paths.data_root")
    return [line.rstrip("\r\n") for _, line in utf8_lines(path)]


def read_stsb_split(path: str | Path) -> list[StsPair]:
    path = Path(path)
    pairs = []
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise DataFormatError(f"{path}:{n}: {len(fields)} tab-separated fields, expected 7 (or 9)")
        pairs.append(_pair(fields[5], fields[6], _score(fields[4], 0.0, 5.0, path, n), path, n))
    if not pairs:
        raise DataFormatError(f"{path}: no sentence pairs")
    return pairs


def read_sick(path: str | Path) -> dict[str, list[StsPair]]:
    path = Path(path)
    lines = _lines(path)
    header = tuple(lines[0].split("\t")) if lines else ()
    if header[: len(SICK_HEADER)] != SICK_HEADER or "SemEval_set" not in header:
        raise DataFormatError(f"{path}:1: not a SICK header (expected {', '.join(SICK_HEADER)}, ..., SemEval_set)")
    column = header.index("SemEval_set")
    splits: dict[str, list[StsPair]] = {name: [] for name in SICK_SETS.values()}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFormatError(f"{path}:{n}: {len(fields)} tab-separated fields, expected {len(header)}")
        if fields[column] not in SICK_SETS:
            raise DataFormatError(f"{path}:{n}: SemEval_set {fields[column]!r} is none of {sorted(SICK_SETS)}")
        pair = _pair(fields[1], fields[2], _score(fields[4], 1.0, 5.0, path, n), path, n)
        splits[SICK_SETS[fields[column]]].append(pair)
    return splits


def load_stsb(data_root: str | Path, folder: str = "sts/stsbenchmark", name: str = "stsb") -> StsDataset:
    """STS Benchmark: ``<data_root>/<folder>/sts-{train,dev,test}.csv``."""
    base = Path(data_root) / folder
    splits = {split: read_stsb_split(base / f"sts-{split}.csv") for split in STSB_SPLITS}
    log.info("Loaded STS-B: %s pairs", {s: len(p) for s, p in splits.items()})
    return StsDataset(name, splits)


def load_sickr(data_root: str | Path, file: str = "sts/sick/SICK.txt", name: str = "sickr") -> StsDataset:
    """SICK-R: ``<data_root>/<file>`` (the full SICK release), relatedness scores by SemEval set."""
    splits = read_sick(Path(data_root) / file)
    log.info("Loaded SICK-R: %s pairs", {s: len(p) for s, p in splits.items()})
    return StsDataset(name, splits)
