"""``data=jsonl``: a researcher's own training data as plain JSON lines, one query per line::

    {"query": "what lowers heart attack risk", "positives": ["Aspirin lowers ..."], "negatives": ["Vitamin C ..."]}

``positives`` (at least one) and ``negatives`` (optional) hold documents: a string (the text), or an object with
``text`` and optional ``title``, or ``{"id": ...}`` naming a document of ``corpus_file`` (a BEIR-style
``corpus.jsonl``: the documents retrieval ranks besides those in the files). A query may carry its own
``"id"``; otherwise it is ``<split>-<line>``. Documents given by text get a stable id from their content
(``doc-`` + 16 hex digits of SHA-1 over title and text), so a text repeated anywhere is one document: a copy of a
positive is never anyone's negative (false-negative masking reads ids). ``train_file`` gives the train split;
``dev_file`` and ``test_file`` (same format; their negatives are ignored) the others. Given negatives are what
``negatives=given`` draws.

Malformed input is a ``DataFormatError`` naming the file and the line: broken JSON, not an object, an empty or
missing query, no positive, a document that is neither a string nor an object with text or a known id, an id
given twice with different text, a query id used twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from retrieval_lab.data.beir import (
    DataFormatError,
    Document,
    Qrels,
    RetrievalDataset,
    parse_json_line,
    read_corpus,
    utf8_lines,
)

log = logging.getLogger(__name__)


def content_id(doc: Document) -> str:
    return "doc-" + hashlib.sha1(f"{doc.title}\x00{doc.text}".encode()).hexdigest()[:16]


class _Reader:
    def __init__(self, corpus: dict[str, Document]) -> None:
        self.corpus = corpus
        self.queries: dict[str, str] = {}
        self.negatives: dict[str, list[str]] = {}

    def document(self, item, path: Path, lineno: int, field: str) -> str:
        where = f"{path}:{lineno}: {field}"
        if isinstance(item, str):
            doc, given = Document("", item), None
        elif isinstance(item, dict):
            given = item.get("id")
            if given is not None and not isinstance(given, str | int):
                raise DataFormatError(f"{where}: 'id' must be a string, got {type(given).__name__}")
            text, title = item.get("text"), item.get("title", "")
            if not isinstance(title, str) or (text is not None and not isinstance(text, str)):
                raise DataFormatError(f"{where}: 'title' and 'text' must be strings")
            if text is None:
                if given is None or str(given) not in self.corpus:
                    raise DataFormatError(f"{where}: a document needs 'text', or an 'id' of the corpus file "
                                          f"({given!r} is not in it)")  # fmt: skip
                return str(given)
            doc = Document(title, text)
        else:
            raise DataFormatError(f"{where}: a document is a string or an object, got {type(item).__name__}")
        if not doc.full_text():
            raise DataFormatError(f"{where}: empty document")
        key = str(given) if given is not None else content_id(doc)
        if self.corpus.setdefault(key, doc) != doc:
            raise DataFormatError(f"{where}: document id {key!r} already has another text")
        return key

    def read(self, path: Path, split: str) -> Qrels:
        qrels: Qrels = {}
        for lineno, line in utf8_lines(path):
            if not line.strip():
                continue
            row = parse_json_line(line, path, lineno, "training")
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            query = row.get("query")
            if not isinstance(query, str) or not query.strip():
                raise DataFormatError(f"{path}:{lineno}: 'query' must be a non-empty string")
            qid = str(row["id"]) if isinstance(row.get("id"), str | int) else f"{split}-{lineno}"
            if qid in self.queries:
                raise DataFormatError(f"{path}:{lineno}: query id {qid!r} is used twice")
            positives, negatives = row.get("positives"), row.get("negatives", [])
            if not isinstance(positives, list) or not positives:
                raise DataFormatError(f"{path}:{lineno}: 'positives' must be a non-empty list of documents")
            if not isinstance(negatives, list):
                raise DataFormatError(f"{path}:{lineno}: 'negatives' must be a list of documents")
            self.queries[qid] = query.strip()
            qrels[qid] = {self.document(p, path, lineno, "positives"): 1 for p in positives}
            given = [self.document(n, path, lineno, "negatives") for n in negatives]
            if split == "train" and given:
                self.negatives[qid] = [d for d in dict.fromkeys(given) if d not in qrels[qid]]
        if not qrels:
            raise DataFormatError(f"{path}: no query lines")
        return qrels


def load_jsonl(
    train_file: str | None,
    dev_file: str | None = None,
    test_file: str | None = None,
    corpus_file: str | None = None,
    name: str = "jsonl",
    domain: str = "passage",
) -> RetrievalDataset:
    """The files as a ``RetrievalDataset`` (splits train, dev, test as given) with ``hard_negatives``."""
    files = {s: f for s, f in (("train", train_file), ("dev", dev_file), ("test", test_file)) if f}
    if not files:
        raise ValueError("data=jsonl needs data.train_file (and optionally dev_file, test_file)")
    for split, file in files.items():
        if not Path(file).is_file():
            raise FileNotFoundError(f"data.{split}_file={file}: no such file")
    reader = _Reader(read_corpus(corpus_file) if corpus_file else {})
    qrels = {split: reader.read(Path(file), split) for split, file in files.items()}
    dataset = RetrievalDataset(name=name, corpus=reader.corpus, queries=reader.queries, qrels=qrels, domain=domain,
                               hard_negatives=reader.negatives)  # fmt: skip
    log.info("Loaded %s from JSON lines: %d documents, %d queries (%s), %d with given negatives", name,
             len(dataset.corpus), len(reader.queries), {s: len(q) for s, q in qrels.items()},
             len(reader.negatives))  # fmt: skip
    return dataset
