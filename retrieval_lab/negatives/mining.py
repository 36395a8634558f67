"""ANN negative mining: encode the corpus with the current weights, index it, take each query's top-k.

The index refresh calls ``mine_ann_negatives`` and publishes its ``negatives`` as the next table version.
Encoding goes through ``encode_texts`` (the lab's one encoding path) and search through ``FaissIndex``; a
late-interaction encoder (ColBERT) encodes token vectors and searches its ``MultiVectorIndex`` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from retrieval_lab.data.beir import Document
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.index.multi_vector import top_rows
from retrieval_lab.models.base import Encoder


@dataclass
class MinedNegatives:
    negatives: dict[str, list[str]]  # query id -> top-k document ids, best first, positives removed
    positive_ranks: list[int]  # 1-based rank of every (query, positive) pair over the whole corpus
    seconds: dict[str, float] = field(default_factory=dict)  # encode, index, mine

    @property
    def positive_mean_rank(self) -> float:
        return float(np.mean(self.positive_ranks)) if self.positive_ranks else float("nan")

    def share_ranked_within(self, k: int) -> float:
        """Share of the (query, positive) pairs ranked within the top ``k``."""
        ranks = self.positive_ranks
        return sum(r <= k for r in ranks) / len(ranks) if ranks else float("nan")


def positive_ranks(
    query_vectors: np.ndarray, doc_vectors: np.ndarray, qids: list[str], doc_ids: list[str], positives, chunk=256
) -> list[int]:
    """Exact 1-based rank of each positive among all documents (ties counted in its favour).

    >>> q, d = np.array([[1.0, 0.0]]), np.array([[0.9, 0.0], [0.1, 0.0], [0.5, 0.0]])
    >>> positive_ranks(q, d, ["q"], ["a", "b", "c"], {"q": {"b", "c"}})
    [3, 2]
    """
    ranks: list[int] = []
    for start in range(0, len(qids), chunk):
        scores = query_vectors[start : start + chunk] @ doc_vectors.T  # (c, N)
        ranks += ranks_in_scores(scores, qids[start : start + chunk], doc_ids, positives)
    return ranks


def hard_negatives(ranked: list[str], positives: set[str], top_k: int) -> list[str]:
    """The first ``top_k`` of a query's ranked document ids that are not its positives.

    >>> hard_negatives(["d1", "d2", "d3", "d4"], {"d2"}, 2)
    ['d1', 'd3']
    """
    return [d for d in ranked if d not in positives][:top_k]


def ranks_in_scores(scores: np.ndarray, qids: list[str], doc_ids: list[str], positives) -> list[int]:
    """The rank of each positive of each query in its row of ``scores`` ``(len(qids), len(doc_ids))``: one plus
    the documents scoring strictly higher."""
    row = {did: i for i, did in enumerate(doc_ids)}
    return [
        int((scores[i] > scores[i, row[did]]).sum()) + 1
        for i, qid in enumerate(qids)
        for did in sorted(positives[qid])
        if did in row
    ]


def table_overlap(a: dict[str, list[str]], b: dict[str, list[str]]) -> float:
    """Mean over the queries of ``a`` (that ``b`` also has) of the share of ``a``'s ids that ``b`` lists too.

    >>> table_overlap({"q1": ["d1", "d2"], "q2": ["d3"]}, {"q1": ["d2", "d9"], "q2": ["d3"]})
    0.75
    """
    shares = [len(set(ids) & set(b[q])) / len(ids) for q, ids in a.items() if ids and q in b]
    return float(np.mean(shares)) if shares else float("nan")


def encode_corpus(encoder: Encoder, corpus: dict[str, Document], doc_ids: list[str], batch_size: int = 64,
                  doc_max_length: int | None = None, **encode_args) -> np.ndarray:  # fmt: skip
    """The documents ``doc_ids`` (a shard, or all of ``corpus``) as vectors, through the lab's one encoding path;
    ``doc_max_length`` (None: the encoder's) can cut them shorter than evaluation does, for a cheaper refresh."""
    texts = [corpus[d].full_text() for d in doc_ids]
    length = min(doc_max_length or encoder.doc_max_length, encoder.doc_max_length)  # never longer than the model's
    return encode_texts(encoder, texts, "docs", batch_size, max_length=length, **encode_args)


def mine_ann_negatives(
    encoder: Encoder,
    corpus: dict[str, Document],
    queries: dict[str, str],
    positives: dict[str, set[str]],
    top_k: int,
    batch_size: int = 64,
    query_batch_size: int = 256,
    precision: str = "auto",
    index_factory: str = "Flat",
    device: str | torch.device | None = None,
    show_progress: bool = False,
    doc_vectors: np.ndarray | None = None,
    doc_max_length: int | None = None,
) -> MinedNegatives:
    """Each query's ``top_k`` documents under ``encoder`` (positives excluded) and the ranks of its positives.

    ``doc_vectors`` (rows in ``corpus`` order) skips encoding the corpus: under DDP the ranks encode it in shards
    and the one rank that mines passes the gathered vectors.
    """
    if encoder.multi_vector:
        return _mine_late_interaction(encoder, corpus, queries, positives, top_k, batch_size, query_batch_size,
                                      precision, index_factory, device, show_progress, doc_max_length)  # fmt: skip
    encode_args = {"precision": precision, "show_progress": show_progress, "device": device}
    start = time.perf_counter()
    doc_ids, qids = list(corpus), list(queries)
    if doc_vectors is None:
        doc_vectors = encode_corpus(encoder, corpus, doc_ids, batch_size, doc_max_length, **encode_args)
    if len(doc_vectors) != len(doc_ids):
        raise ValueError(f"{len(doc_vectors)} document vectors for {len(doc_ids)} documents")
    query_vectors = encode_texts(encoder, [queries[q] for q in qids], "queries", query_batch_size, **encode_args)
    encoded = time.perf_counter()
    index = FaissIndex(doc_vectors.shape[1], index_factory)
    index.add(doc_vectors, doc_ids)
    indexed = time.perf_counter()
    depth = top_k + max(len(positives[q]) for q in qids)  # room for the positives that are dropped
    _, ranked = index.search(query_vectors, depth)
    negatives = {q: hard_negatives(row, positives[q], top_k) for q, row in zip(qids, ranked, strict=True)}
    ranks = positive_ranks(query_vectors, doc_vectors, qids, doc_ids, positives)
    mined = time.perf_counter()
    seconds = {"encode": encoded - start, "index": indexed - encoded, "mine": mined - indexed}
    return MinedNegatives(negatives, ranks, seconds)


def _mine_late_interaction(encoder, corpus, queries, positives, top_k, batch_size, query_batch_size, precision,
                           index_factory, device, show_progress, doc_max_length) -> MinedNegatives:  # fmt: skip
    """A late-interaction encoder (ColBERT) mines by exact MaxSim over every document where ``index_factory`` is
    "Flat" (exact, as a bi-encoder's Flat index is), else through its end-to-end retrieval with that FAISS
    factory over the token vectors ("auto": IVF sized to the corpus; candidates re-ranked by exact MaxSim). The
    positives' ranks come from exact MaxSim over every document either way, in the same pass as exact mining."""
    from retrieval_lab.retrievers.colbert import ColbertRetriever  # the retriever imports the index layer

    start = time.perf_counter()
    exact = index_factory == "Flat"
    args = {"batch_size": batch_size, "query_batch_size": query_batch_size, "precision": precision}
    retriever = ColbertRetriever(encoder, mode="exact" if exact else "end_to_end", index_factory=index_factory,
                                 device=str(device or "cpu"), show_progress=show_progress,
                                 doc_max_length=doc_max_length, **args)  # fmt: skip
    retriever.index(corpus)
    qids = list(queries)
    vectors = retriever.query_vectors([queries[q] for q in qids])
    indexed = time.perf_counter()
    build = retriever.timings["build_index_s"]
    store, negatives, ranks = retriever.store, {}, []
    for positions, scores in store.iter_exact_scores(vectors):  # (g, N) exact MaxSim, every document
        group = [qids[i] for i in positions]
        ranks += ranks_in_scores(scores, group, store.ids, positives)
        if exact:
            for qid, row in zip(group, scores, strict=True):
                ranked = [store.ids[r] for r in top_rows(row, top_k + len(positives[qid]))]
                negatives[qid] = hard_negatives(ranked, positives[qid], top_k)
    if not exact:
        for qid, q in zip(qids, vectors, strict=True):
            _, ranked = store.search(q, top_k + len(positives[qid]), retriever.candidates_per_token)
            negatives[qid] = hard_negatives(ranked, positives[qid], top_k)
    mined = time.perf_counter()
    seconds = {"encode": indexed - start - build, "index": build, "mine": mined - indexed}
    return MinedNegatives(negatives, ranks, seconds)
