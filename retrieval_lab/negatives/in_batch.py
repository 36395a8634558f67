"""In-batch negatives only: the other queries' positives in the (global) batch are the negatives."""

from __future__ import annotations

import random

from retrieval_lab.negatives.base import NegativeSampler


class InBatchNegatives(NegativeSampler):
    num_negatives = 0

    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        return []
