"""Uniformly random corpus documents (never a positive of the query) on top of the in-batch negatives."""

from __future__ import annotations

import random

from retrieval_lab.negatives.base import NegativeSampler, check_num_negatives


class RandomNegatives(NegativeSampler):
    def __init__(self, num_negatives: int = 1) -> None:
        self.num_negatives = check_num_negatives(num_negatives)

    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        return self.random_docs(self.num_negatives, positives, rng)
