"""BM25 hard negatives: each query's top-k from the lab's BM25 retriever, positives excluded, n drawn per example."""

from __future__ import annotations

import logging
import random

from retrieval_lab.data.beir import Document
from retrieval_lab.negatives.base import NegativeSampler, check_num_negatives
from retrieval_lab.retrievers.bm25 import BM25Retriever

log = logging.getLogger(__name__)


class BM25Negatives(NegativeSampler):
    """Mines once in ``prepare``; ``sample`` draws ``num_negatives`` of the query's mined candidates.

    Where a query has fewer candidates than ``num_negatives`` (tiny corpora, many positives) the rest are
    random documents, so every example carries the same number of negatives.
    """

    def __init__(self, num_negatives: int = 1, top_k: int = 100, show_progress: bool = True, **bm25_args) -> None:
        self.num_negatives = check_num_negatives(num_negatives)
        if top_k < 1:
            raise ValueError(f"negatives.top_k must be >= 1, got {top_k}")
        if num_negatives > top_k:
            raise ValueError(f"negatives.num_negatives ({num_negatives}) is larger than negatives.top_k ({top_k})")
        self.top_k, self.show_progress, self.bm25_args = top_k, show_progress, bm25_args
        self.candidates: dict[str, list[str]] = {}

    def prepare(self, corpus: dict[str, Document], queries: dict[str, str], positives: dict[str, set[str]]) -> None:
        super().prepare(corpus, queries, positives)
        retriever = BM25Retriever(show_progress=self.show_progress, **self.bm25_args)
        retriever.index(corpus)
        run = retriever.search(queries, self.top_k)
        self.candidates = {
            qid: [did for did in sorted(docs, key=docs.__getitem__, reverse=True) if did not in positives[qid]]
            for qid, docs in run.items()
        }
        short = sum(len(c) < self.num_negatives for c in self.candidates.values())
        log.info(
            "Mined BM25 top-%d for %d queries (%d with fewer than %d candidates)",
            self.top_k,
            len(queries),
            short,
            self.num_negatives,
        )

    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        if qid not in self.candidates:
            raise KeyError(f"query {qid!r} was not mined: call prepare() with the training queries first")
        pool = [did for did in self.candidates[qid] if did not in positives]  # the caller may exclude more
        picked = rng.sample(pool, min(self.num_negatives, len(pool)))
        return picked + self.random_docs(self.num_negatives - len(picked), positives | set(picked), rng)
