"""Negative samplers see ids, not tensors: given a training query and its positives, return document ids."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod

from retrieval_lab.data.beir import Document


class NegativeSampler(ABC):
    """``prepare`` once with the corpus and the training queries, then ``sample`` per example.

    ``sample`` takes the caller's ``random.Random`` so an example's negatives depend only on the seed the
    data module derives for it (seed, epoch, example), which keeps a resumed run on the same draws.
    """

    num_negatives: int = 0

    def prepare(self, corpus: dict[str, Document], queries: dict[str, str], positives: dict[str, set[str]]) -> None:
        """Index what the sampler needs; the default keeps the corpus ids for random draws."""
        self.doc_ids = list(corpus)

    @abstractmethod
    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]: ...

    def sample_at(self, qid: str, positives: set[str], rng: random.Random, batch: int | None) -> list[str]:
        """``sample`` for an example of global batch ``batch`` (counted from 0 over the whole run; None where
        unknown). Samplers whose pool changes during training (ANN tables) choose it by the batch."""
        return self.sample(qid, positives, rng)

    def random_docs(self, n: int, exclude: set[str], rng: random.Random) -> list[str]:
        """``n`` distinct corpus ids outside ``exclude``, uniformly at random."""
        if len(self.doc_ids) - len(exclude) < n:
            raise ValueError(f"corpus has fewer than {n} documents outside the {len(exclude)} excluded")
        picked: list[str] = []
        while len(picked) < n:
            did = self.doc_ids[rng.randrange(len(self.doc_ids))]
            if did not in exclude and did not in picked:
                picked.append(did)
        return picked


def check_num_negatives(n: int) -> int:
    if n < 0:
        raise ValueError(f"negatives.num_negatives must be >= 0, got {n}")
    return n
