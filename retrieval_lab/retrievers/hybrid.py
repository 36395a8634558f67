"""Hybrid retrieval: a sparse (BM25) run fused with any dense retriever's, by normalized score interpolation or
reciprocal rank fusion. The fusions are pure functions over runs."""

from __future__ import annotations

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run
from retrieval_lab.retrievers.base import Retriever

FUSIONS = ("interpolation", "rrf")


def min_max(scores: dict[str, float]) -> dict[str, float]:
    """Scale one query's scores to [0, 1]; equal scores all become 1.

    >>> min_max({"a": 3.0, "b": 1.0, "c": 2.0})
    {'a': 1.0, 'b': 0.0, 'c': 0.5}
    """
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    return {d: (s - low) / (high - low) if high > low else 1.0 for d, s in scores.items()}


def interpolate(sparse: Run, dense: Run, alpha: float) -> Run:
    """``alpha * dense + (1 - alpha) * sparse`` over min-max normalized scores; a document missing from one run
    gets that run's minimum (0).

    >>> interpolate({"q": {"a": 10.0, "b": 5.0}}, {"q": {"b": 0.9, "c": 0.5}}, alpha=0.5)
    {'q': {'a': 0.5, 'b': 0.5, 'c': 0.0}}
    """
    fused: Run = {}
    for qid in sparse.keys() | dense.keys():
        s, d = min_max(sparse.get(qid, {})), min_max(dense.get(qid, {}))
        fused[qid] = {
            doc: alpha * d.get(doc, 0.0) + (1 - alpha) * s.get(doc, 0.0) for doc in sorted(s.keys() | d.keys())
        }
    return fused


def reciprocal_rank_fusion(runs: list[Run], k: int = 60) -> Run:
    """Sum over the runs of ``1 / (k + rank)`` (rank from 1; ties broken by document id).

    >>> fused = reciprocal_rank_fusion([{"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 5.0}}], k=1)
    >>> {d: round(s, 4) for d, s in fused["q"].items()}
    {'a': 0.5, 'b': 0.8333}
    """
    fused: Run = {}
    for run in runs:
        for qid, docs in run.items():
            ranked = sorted(docs, key=lambda doc: (-docs[doc], doc))
            target = fused.setdefault(qid, {})
            for rank, doc in enumerate(ranked, start=1):
                target[doc] = target.get(doc, 0.0) + 1.0 / (k + rank)
    return {qid: dict(sorted(docs.items())) for qid, docs in fused.items()}


def top_k(run: Run, k: int) -> Run:
    return {qid: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:k]) for qid, docs in run.items()}


class HybridRetriever(Retriever):
    """Both retrievers take each query's top ``depth`` documents; the fusion ranks their union."""

    def __init__(
        self, sparse: Retriever, dense: Retriever, fusion: str = "interpolation", alpha: float = 0.5,
        rrf_k: int = 60, depth: int = 1000,
    ) -> None:  # fmt: skip
        if fusion not in FUSIONS:
            raise ValueError(f"retriever.fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"retriever.alpha must be in [0, 1], got {alpha}")
        if rrf_k < 0 or depth < 1:
            raise ValueError(f"retriever.rrf_k must be >= 0 and retriever.depth >= 1, got {rrf_k}, {depth}")
        self.sparse, self.dense = sparse, dense
        self.fusion, self.alpha, self.rrf_k, self.depth = fusion, alpha, rrf_k, depth

    @property
    def expansions(self) -> dict:
        """The LLM rewrites of either side (LameR as the sparse side, HyDE as the dense), for the run folder."""
        return {**getattr(self.dense, "expansions", {}), **getattr(self.sparse, "expansions", {})}

    @property
    def timings(self) -> dict[str, float]:
        """Each side's own measurements, named by side (``sparse_generated``, ``dense_encode_corpus_s``, ...)."""
        return {f"{side}_{k}": v for side in ("sparse", "dense") for k, v in getattr(getattr(self, side), "timings",
                                                                                          {}).items()}  # fmt: skip

    def index(self, corpus: dict[str, Document]) -> None:
        self.sparse.index(corpus)
        self.dense.index(corpus)

    def search(self, queries: dict[str, str], k: int) -> Run:
        depth = max(k, self.depth)
        sparse, dense = self.sparse.search(queries, depth), self.dense.search(queries, depth)
        if self.fusion == "rrf":
            fused = reciprocal_rank_fusion([sparse, dense], self.rrf_k)
        else:
            fused = interpolate(sparse, dense, self.alpha)
        return top_k({qid: fused.get(qid, {}) for qid in queries}, k)
