"""BM25 through bm25s (Lucene scoring by default), with PyStemmer stemming and stopword removal."""

from __future__ import annotations

import bm25s
import numpy as np
import Stemmer

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run
from retrieval_lab.retrievers.base import Retriever

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


class BM25Retriever(Retriever):
    def __init__(
        self,
        k1: float = 1.2,
        b: float = 0.75,
        method: str = "lucene",
        stemmer: str | None = "english",
        stopwords: str | list[str] | None = "en",
        show_progress: bool = True,
        n_threads: int = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"retriever.method must be one of {METHODS}, got {method!r}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"retriever.k1 must be >= 0 and retriever.b in [0, 1], got k1={k1}, b={b}")
        self.stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        self.stopwords = stopwords
        self.show_progress, self.n_threads = show_progress, n_threads
        self.bm25 = bm25s.BM25(k1=k1, b=b, method=method)
        self.doc_ids: list[str] = []

    def _tokenize(self, texts: list[str]):
        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, show_progress=self.show_progress)

    def index(self, corpus: dict[str, Document]) -> None:
        self.doc_ids = list(corpus)
        tokens = self._tokenize([doc.full_text() for doc in corpus.values()])
        self.bm25.index(tokens, show_progress=self.show_progress)

    def search_ids(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices into the indexed corpus and their scores, ``(Q, k)`` each, best first."""
        if not self.doc_ids:
            raise RuntimeError("BM25Retriever.search called before index()")
        k = min(k, len(self.doc_ids))
        return self.bm25.retrieve(
            self._tokenize(texts), k=k, show_progress=self.show_progress, n_threads=self.n_threads
        )

    def search(self, queries: dict[str, str], k: int) -> Run:
        rows, scores = self.search_ids(list(queries.values()), k)
        return {
            qid: {self.doc_ids[r]: float(s) for r, s in zip(row, score, strict=True) if s > 0}
            for qid, row, score in zip(queries, rows, scores, strict=True)
        }
