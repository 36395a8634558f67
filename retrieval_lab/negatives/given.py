"""The hard negatives a dataset came with (``data=jsonl``'s ``negatives`` field): ``num_negatives`` drawn per
example from its query's given list, topped up with random documents where the list is shorter."""

from __future__ import annotations

import logging
import random

from retrieval_lab.data.beir import Document
from retrieval_lab.negatives.base import NegativeSampler, check_num_negatives

log = logging.getLogger(__name__)


class GivenNegatives(NegativeSampler):
    def __init__(self, num_negatives: int = 1) -> None:
        self.num_negatives = check_num_negatives(num_negatives)
        self.given: dict[str, list[str]] | None = None

    def use_dataset(self, dataset) -> None:
        """Called by the data module with the loaded dataset, before ``prepare``."""
        given = getattr(dataset, "hard_negatives", None)
        if given is None:
            raise ValueError(f"negatives=given draws the negatives a dataset comes with; data {dataset.name!r} has "
                             "none (data=jsonl with a 'negatives' field has)")  # fmt: skip
        self.given = given

    def prepare(self, corpus: dict[str, Document], queries: dict[str, str], positives: dict[str, set[str]]) -> None:
        super().prepare(corpus, queries, positives)
        if self.given is None:
            raise RuntimeError("GivenNegatives.use_dataset(dataset) must be called before prepare")
        short = sum(len(self.given.get(q, [])) < self.num_negatives for q in queries)
        if short:
            log.warning("negatives=given: %d of %d training queries have fewer than %d given negatives; random "
                        "documents fill the rest", short, len(queries), self.num_negatives)  # fmt: skip

    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        pool = [d for d in self.given.get(qid, []) if d not in positives]
        picked = rng.sample(pool, min(self.num_negatives, len(pool)))
        return picked + self.random_docs(self.num_negatives - len(picked), positives | set(picked), rng)
