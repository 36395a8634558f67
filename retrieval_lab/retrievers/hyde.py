"""HyDE (Gao et al. 2022, "Precise zero-shot dense retrieval without relevance labels"): the LLM writes
``num_passages`` hypothetical documents for the query; the dense encoder embeds them (document tower) and the
query (query tower); the mean of the ``N + 1`` vectors searches the index. The generated passages may be wrong
in fact; the encoder only needs them to look like the relevant documents."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run
from retrieval_lab.generation.base import Generator
from retrieval_lab.retrievers.base import Retriever
from retrieval_lab.retrievers.dense import DenseRetriever
from retrieval_lab.retrievers.lamer import check_template, generation_costs

DEFAULT_PROMPT = "Please write a {domain} to answer the question.\nQuestion: {query}\nPassage:"


class HyDERetriever(Retriever):
    def __init__(
        self,
        dense: DenseRetriever,
        generator: Generator,
        num_passages: int = 8,
        include_query: bool = True,
        domain: str = "passage",
        prompt: str = DEFAULT_PROMPT,
    ) -> None:
        if num_passages < 1:
            raise ValueError(f"retriever.num_passages must be >= 1, got {num_passages}")
        check_template(prompt, ("query", "domain"), "retriever.prompt")
        self.dense, self.generator = dense, generator
        self.num_passages, self.include_query, self.domain, self.prompt = num_passages, include_query, domain, prompt
        self.expansions: dict[str, dict] = {}
        self.timings: dict[str, float] = {}

    def index(self, corpus: Mapping[str, Document]) -> None:
        self.dense.index(dict(corpus))
        self.timings.update(self.dense.timings)

    def search(self, queries: dict[str, str], k: int) -> Run:
        prompts = [self.prompt.format(query=q, domain=self.domain) for q in queries.values()]
        before = dict(self.generator.timings)
        passages = self.generator.generate(prompts, self.num_passages)
        start = time.perf_counter()
        flat = [p for row in passages for p in row]
        vectors = self.dense.encode(flat, "docs").reshape(len(queries), self.num_passages, -1)
        if self.include_query:
            query_vectors = self.dense.encode(list(queries.values()), "queries")[:, None, :]
            vectors = np.concatenate([query_vectors, vectors], axis=1)
        run = self.dense.search_vectors(list(queries), np.ascontiguousarray(vectors.mean(axis=1)), k)
        self.expansions = {qid: {"prompt": p, "passages": ps} for qid, p, ps in zip(queries, prompts, passages,
                                                                                    strict=True)}  # fmt: skip
        self.timings.update(generation_costs(self.generator, before, len(queries)))
        self.timings["search_s_per_query"] = (time.perf_counter() - start) / max(1, len(queries))
        return run
