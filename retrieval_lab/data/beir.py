"""Read datasets in the BEIR layout: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Decisions on messy input (tested in ``tests/test_beir_data.py``):

- A malformed JSON line, a line without ``_id`` or a qrels row with the wrong number of fields is an error
  naming the file and the line number.
- A duplicate ``_id`` in the corpus or the queries is an error naming both lines: which text is meant would
  otherwise be a silent guess.
- An empty document (no title and no text) is kept, so qrels that point at it stay valid, and counted in a
  warning: it can only be retrieved by chance. An empty query is an error, since it cannot be evaluated.
- Qrels ids absent from the corpus or the queries are an error giving their count and the first few.
- Graded relevance is kept as written; rows with relevance <= 0 stay in the qrels as judged non-relevant.
- CRLF and LF line endings are both read.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_lab.data.download import ensure_beir_dataset

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]


class DataFormatError(ValueError):
    """Malformed dataset file; the message names the file and, where it can, the line."""


@dataclass
class Document:
    title: str
    text: str

    def full_text(self, sep: str = " ") -> str:
        """Title and text joined, the way BEIR's evaluations feed documents to a model."""
        return f"{self.title}{sep}{self.text}".strip() if self.title else self.text.strip()


@dataclass
class RetrievalDataset:
    """A corpus, its queries and the relevance judgements of each split."""

    name: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, Qrels] = field(default_factory=dict)
    domain: str = "passage"  # what a document is called in LLM prompts (LameR, HyDE): "scientific paper passage"
    hard_negatives: dict[str, list[str]] | None = None  # negatives a dataset comes with (data=jsonl), per query

    def split_queries(self, split: str) -> dict[str, str]:
        """The queries judged in ``split``, in file order."""
        judged = self.qrels[split]
        return {qid: text for qid, text in self.queries.items() if qid in judged}

    def subsample(self, queries_per_split: int, corpus_size: int, seed: int = 0) -> RetrievalDataset:
        """A small copy for trial runs (``debug=fast``): at most ``queries_per_split`` seeded queries of each split
        other than train (train keeps all), every document judged for a kept query, then seeded other documents up
        to ``corpus_size``. Its numbers are not comparable with the full dataset's: the name says so."""
        rng = random.Random(seed)
        qrels = {}
        for split, judged in self.qrels.items():
            ids = sorted(judged)
            kept = ids if split == "train" else sorted(rng.sample(ids, min(queries_per_split, len(ids))))
            qrels[split] = {q: judged[q] for q in kept}
        needed = {d for judged in qrels.values() for docs in judged.values() for d in docs}
        others = sorted(set(self.corpus) - needed)
        kept_docs = needed | set(rng.sample(others, max(0, min(len(others), corpus_size - len(needed)))))
        corpus = {d: doc for d, doc in self.corpus.items() if d in kept_docs}
        queries = {q: t for q, t in self.queries.items() if any(q in judged for judged in qrels.values())}
        given = None if self.hard_negatives is None else {
            q: [d for d in ds if d in kept_docs] for q, ds in self.hard_negatives.items() if q in queries}  # fmt: skip
        return RetrievalDataset(f"{self.name}-subsample", corpus, queries, qrels, self.domain, given)


def utf8_lines(path: Path, opener=open) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, read as a stream (``opener``: ``gzip.open`` for ``.gz``);
    a line that is not UTF-8, or a compressed file that is broken, is a ``DataFormatError`` naming the file and
    the line."""
    lineno = 0
    try:
        with opener(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataFormatError(f"{path}:{lineno}: not UTF-8 ({err.reason} at byte {err.start} of the "
                                          "line)") from None  # fmt: skip
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataFormatError(f"{path}:{lineno + 1}: broken compressed file ({err})") from None


def parse_json_line(line: str, path: Path, lineno: int, kind: str):
    """One JSON value, or a ``DataFormatError`` naming the file and line (nesting too deep and numbers too long
    to convert are malformed too)."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise DataFormatError(f"{path}:{lineno}: malformed JSON in {kind} file ({getattr(err, 'msg', err)})") from None


def _read_jsonl(path: Path, kind: str) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        row = parse_json_line(line, path, lineno, kind)
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        if "_id" not in row:
            raise DataFormatError(f"{path}:{lineno}: {kind} line has no '_id' field")
        rows.append((lineno, row))
    return rows


def _index_by_id(rows: list[tuple[int, dict]], path: Path) -> dict[str, tuple[int, dict]]:
    seen: dict[str, tuple[int, dict]] = {}
    for lineno, row in rows:
        key = str(row["_id"])
        if key in seen:
            raise DataFormatError(f"{path}:{lineno}: duplicate _id {key!r} (first seen on line {seen[key][0]})")
        seen[key] = (lineno, row)
    return seen


def read_corpus(path: str | Path) -> dict[str, Document]:
    path = Path(path)
    corpus = {
        key: Document(title=str(row.get("title") or ""), text=str(row.get("text") or ""))
        for key, (_, row) in _index_by_id(_read_jsonl(path, "corpus"), path).items()
    }
    empty = [key for key, doc in corpus.items() if not doc.full_text()]
    if empty:
        log.warning("%s: %d documents have neither title nor text (first: %s)", path, len(empty), empty[:5])
    return corpus


def read_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    queries: dict[str, str] = {}
    for key, (lineno, row) in _index_by_id(_read_jsonl(path, "queries"), path).items():
        text = str(row.get("text") or "").strip()
        if not text:
            raise DataFormatError(f"{path}:{lineno}: query {key!r} has empty text")
        queries[key] = text
    return queries


def read_qrels(path: str | Path) -> Qrels:
    """Read a BEIR qrels TSV (``query-id corpus-id score``, header optional) with LF or CRLF endings."""
    path = Path(path)
    qrels: Qrels = {}
    for lineno, raw in utf8_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if lineno == 1 and fields[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(fields) != 3:
            raise DataFormatError(
                f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}"
            )
        qid, did, score = (f.strip() for f in fields)
        try:
            relevance = int(float(score))
        except (ValueError, OverflowError) as err:
            raise DataFormatError(f"{path}:{lineno}: relevance score {score!r} is not a number") from err
        qrels.setdefault(qid, {})[did] = relevance
    return qrels


def check_qrels_ids(qrels: Qrels, corpus: dict, queries: dict, path: Path) -> None:
    """Refuse qrels that mention queries or documents the dataset does not have."""
    missing_q = sorted(q for q in qrels if q not in queries)
    missing_d = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
    problems = []
    if missing_q:
        problems.append(f"{len(missing_q)} query ids absent from queries.jsonl (first: {missing_q[:5]})")
    if missing_d:
        problems.append(f"{len(missing_d)} corpus ids absent from corpus.jsonl (first: {missing_d[:5]})")
    if problems:
        raise DataFormatError(f"{path}: " + "; ".join(problems))


def load_beir(
    name: str,
    data_root: str | Path,
    splits: list[str] | tuple[str, ...] | None = None,
    download: bool = True,
    subsample: dict | None = None,
    domain: str = "passage",
    download_url: str | None = None,
    download_md5: str | None = None,
) -> RetrievalDataset:
    """Load ``<data_root>/beir/<name>``, downloading it from the public BEIR address if it is missing.

    ``splits`` names the qrels to read; by default every ``qrels/*.tsv`` present. ``domain`` names the kind of
    document in LLM prompts (``data.domain``). ``download_url`` (``{name}`` filled in) and ``download_md5``
    replace BEIR's address and published checksum, e.g. for a mirror.
    """
    folder = ensure_beir_dataset(name, Path(data_root) / "beir", download, url=download_url, md5=download_md5)
    if splits is None:
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    corpus = read_corpus(folder / "corpus.jsonl")
    queries = read_queries(folder / "queries.jsonl")
    qrels: dict[str, Qrels] = {}
    for split in splits:
        path = folder / "qrels" / f"{split}.tsv"
        if not path.exists():
            available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
            raise FileNotFoundError(f"{path}: no qrels for split {split!r}; available: {available}")
        qrels[split] = read_qrels(path)
        check_qrels_ids(qrels[split], corpus, queries, path)
    log.info("Loaded %s: %d documents, %d queries, splits %s", name, len(corpus), len(queries), list(qrels))
    dataset = RetrievalDataset(name=name, corpus=corpus, queries=queries, qrels=qrels, domain=domain)
    if subsample:  # {queries_per_split, corpus_size, seed}: a small copy for trial runs
        dataset = dataset.subsample(**subsample)
        log.warning("data.subsample: %d documents, %s queries per split (%s): not comparable with the full set",
                    len(dataset.corpus), {s: len(q) for s, q in dataset.qrels.items()}, dataset.name)  # fmt: skip
    return dataset
