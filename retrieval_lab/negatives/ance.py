"""ANCE negatives: drawn from the newest ANN negatives table the index refresh published (see ``table.py``)."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from retrieval_lab.data.beir import Document
from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.base import NegativeSampler, check_num_negatives
from retrieval_lab.negatives.bm25 import BM25Negatives

log = logging.getLogger(__name__)


class AnnNegatives(NegativeSampler):
    """``num_negatives`` drawn per example from the query's top ``top_k`` in the newest table in ``table_dir``.

    Until a table exists (before the first refresh) examples come from ``warmup``, BM25 negatives by default,
    as ANCE warmed up. The sampler looks for a newer table at most every ``poll_seconds`` (one read of the
    small ``LATEST`` file) and swaps it in between two examples; the index refresh callback also calls
    ``reload`` right after publishing. Nothing else is cached, so every example after the swap sees the new
    table, in the training process and in each data-loader worker alike.
    """

    def __init__(
        self,
        table_dir: str | Path,
        warmup: NegativeSampler | None = None,
        num_negatives: int = 1,
        top_k: int = 200,
        poll_seconds: float = 1.0,
    ) -> None:
        self.num_negatives = check_num_negatives(num_negatives)
        if num_negatives < 1:
            raise ValueError("negatives.num_negatives must be >= 1 for negatives=ance (0 is negatives=in_batch)")
        if top_k < 1:
            raise ValueError(f"negatives.top_k must be >= 1, got {top_k}")
        if num_negatives > top_k:
            raise ValueError(f"negatives.num_negatives ({num_negatives}) is larger than negatives.top_k ({top_k})")
        if poll_seconds < 0:
            raise ValueError(f"negatives.poll_seconds must be >= 0, got {poll_seconds}")
        warmup = BM25Negatives(num_negatives, top_k, show_progress=False) if warmup is None else warmup
        if not isinstance(warmup, NegativeSampler):
            raise ValueError(f"negatives.warmup must configure a NegativeSampler, got {type(warmup).__name__}")
        if warmup.num_negatives != num_negatives:
            raise ValueError(
                f"negatives.warmup.num_negatives ({warmup.num_negatives}) must equal negatives.num_negatives "
                f"({num_negatives}): every example carries the same number of negatives"
            )
        self.table_dir, self.warmup = Path(table_dir), warmup
        self.top_k, self.poll_seconds = top_k, poll_seconds
        self.table: tables.NegativesTable | None = None
        self._checked_at = float("-inf")

    @property
    def version(self) -> int | None:
        """The version of the table in use; None while warming up."""
        return None if self.table is None else self.table.version

    def prepare(self, corpus: dict[str, Document], queries: dict[str, str], positives: dict[str, set[str]]) -> None:
        super().prepare(corpus, queries, positives)
        self.warmup.prepare(corpus, queries, positives)
        self.reload()
        if self.table is None:
            log.info("No negatives table in %s yet: warming up on %s", self.table_dir, type(self.warmup).__name__)

    def reload(self) -> None:
        """Swap in the newest published table now (or drop the current one if the folder was pruned to none)."""
        self._checked_at = time.monotonic()
        newest = tables.latest_version(self.table_dir)
        if newest == self.version:
            return
        self.table = None if newest is None else tables.load(self.table_dir, newest)
        if self.table is not None:
            log.info("ANN negatives: using table version %d (%s)", newest, self.table.meta)

    def _current(self) -> tables.NegativesTable | None:
        if time.monotonic() - self._checked_at >= self.poll_seconds:
            self.reload()
        return self.table

    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        table = self._current()
        if table is None:
            return self.warmup.sample(qid, positives, rng)
        if qid not in table.negatives:
            raise KeyError(f"query {qid!r} is not in negatives table {table.version} ({self.table_dir})")
        pool = [did for did in table.negatives[qid][: self.top_k] if did not in positives]
        picked = rng.sample(pool, min(self.num_negatives, len(pool)))
        return picked + self.random_docs(self.num_negatives - len(picked), positives | set(picked), rng)
