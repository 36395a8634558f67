"""``data=ir_datasets``: any dataset the ir_datasets package knows (MS MARCO, TREC DL, LoTTE, BEIR, ...), read into
the lab's ``RetrievalDataset`` so every task works on it as on a BEIR folder.

An ir_datasets id names one split of a collection (``beir/scifact/train``, ``msmarco-passage/dev/small``), so the
config maps the lab's split names to ids: ``data.splits={train: beir/scifact/train, test: beir/scifact/test}``.
The documents come from ``data.docs`` (default: the first split's id); every split must share that collection.
ir_datasets downloads and caches the files itself (``IR_DATASETS_HOME``, ``~/.ir_datasets`` by default).

The same rules as the BEIR reader: a duplicate document or query id is an error naming the id, an empty query
is an error, an empty document is kept and counted in a warning, and qrels ids absent from the documents or the
queries are an error naming the ir_datasets id, with their count and the first few. Graded relevance is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from retrieval_lab.data.beir import DataFormatError, Document, Qrels, RetrievalDataset

log = logging.getLogger(__name__)


def _load(dataset_id: str, key: str):
    import ir_datasets  # imported here: only data=ir_datasets needs it

    try:
        return ir_datasets.load(dataset_id)
    except KeyError as err:
        raise ValueError(f"{key}={dataset_id!r} is not an ir_datasets id ({err})") from None


def _doc_text(record) -> tuple[str, str]:
    """(title, text) of an ir_datasets document record, whatever its fields."""
    title = getattr(record, "title", "") or ""
    text = getattr(record, "text", None)
    if text is None:  # records without a text field (web pages, multi-field documents)
        text = record.default_text() if hasattr(record, "default_text") else " ".join(
            str(v) for k, v in record._asdict().items() if k != "doc_id" and isinstance(v, str))  # fmt: skip
        title = "" if title and text.startswith(title) else title
    return title, text


def _query_text(record) -> str:
    text = getattr(record, "text", None)
    return record.default_text() if text is None and hasattr(record, "default_text") else (text or "")


def read_docs(dataset, dataset_id: str) -> dict[str, Document]:
    if not dataset.has_docs():
        raise ValueError(f"data.docs={dataset_id!r} has no documents in ir_datasets")
    corpus: dict[str, Document] = {}
    empty = 0
    for record in dataset.docs_iter():
        if record.doc_id in corpus:
            raise DataFormatError(f"ir_datasets {dataset_id}: document id {record.doc_id!r} appears twice")
        title, text = _doc_text(record)
        corpus[record.doc_id] = Document(title, text)
        empty += not (title.strip() or text.strip())
    if empty:
        log.warning("ir_datasets %s: %d empty documents (kept; only chance retrieves them)", dataset_id, empty)
    return corpus


def read_split(dataset, dataset_id: str, key: str) -> tuple[dict[str, str], Qrels]:
    """The split's queries and qrels (relevance as given; <= 0 kept as judged non-relevant)."""
    if not (dataset.has_queries() and dataset.has_qrels()):
        raise ValueError(f"{key}={dataset_id!r} has no queries or no qrels in ir_datasets")
    queries: dict[str, str] = {}
    for record in dataset.queries_iter():
        if record.query_id in queries:
            raise DataFormatError(f"ir_datasets {dataset_id}: query id {record.query_id!r} appears twice")
        text = _query_text(record)
        if not text.strip():
            raise DataFormatError(f"ir_datasets {dataset_id}: query {record.query_id!r} is empty")
        queries[record.query_id] = text
    qrels: Qrels = {}
    for row in dataset.qrels_iter():
        qrels.setdefault(row.query_id, {})[row.doc_id] = int(row.relevance)
    return queries, qrels


def load_ir_datasets(
    splits: Mapping[str, str],
    docs: str | None = None,
    name: str | None = None,
    domain: str = "passage",
    subsample: dict | None = None,
) -> RetrievalDataset:
    """``splits`` maps the lab's split names (train, dev, test) to ir_datasets ids; ``docs`` names the id whose
    documents form the corpus (default: the first split's)."""
    if not splits:
        raise ValueError("data.splits must map split names to ir_datasets ids, e.g. {test: beir/scifact/test}")
    splits = dict(splits)
    docs_key = "data.docs" if docs else f"data.splits.{next(iter(splits))}"
    docs = docs or next(iter(splits.values()))
    corpus = read_docs(_load(docs, docs_key), docs)
    queries: dict[str, str] = {}
    qrels: dict[str, Qrels] = {}
    for split, dataset_id in splits.items():
        split_queries, split_qrels = read_split(_load(dataset_id, f"data.splits.{split}"), dataset_id,
                                                f"data.splits.{split}")  # fmt: skip
        for qid, text in split_queries.items():
            if queries.setdefault(qid, text) != text:
                raise DataFormatError(f"ir_datasets {dataset_id}: query id {qid!r} has another text in another split")
        missing_q = sorted(q for q in split_qrels if q not in split_queries)
        missing_d = sorted({d for judged in split_qrels.values() for d in judged if d not in corpus})
        if missing_q or missing_d:
            raise DataFormatError(
                f"ir_datasets {dataset_id} (data.splits.{split}): qrels name {len(missing_q)} query ids without a "
                f"query (first: {missing_q[:5]}) and {len(missing_d)} document ids absent from {docs}'s documents "
                f"(first: {missing_d[:5]})"
            )
        qrels[split] = split_qrels
    dataset = RetrievalDataset(name=name or docs.replace("/", "-"), corpus=corpus, queries=queries, qrels=qrels,
                               domain=domain)  # fmt: skip
    log.info("Loaded ir_datasets %s: %d documents, %d queries, splits %s", docs, len(corpus), len(queries), list(qrels))
    if subsample:
        dataset = dataset.subsample(**subsample)
        log.warning("data.subsample: %d documents (%s): not comparable with the full set", len(dataset.corpus),
                    dataset.name)  # fmt: skip
    return dataset
