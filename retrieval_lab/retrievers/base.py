"""Retrievers index a corpus once, then answer any number of query sets."""

from __future__ import annotations

from abc import ABC, abstractmethod

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run


class Retriever(ABC):
    @abstractmethod
    def index(self, corpus: dict[str, Document]) -> None: ...

    @abstractmethod
    def search(self, queries: dict[str, str], k: int) -> Run:
        """``{qid: {doc_id: score}}`` with the top ``k`` documents of each query."""

    def retrieve(self, corpus: dict[str, Document], queries: dict[str, str], k: int) -> Run:
        self.index(corpus)
        return self.search(queries, k)
