"""ANCE negatives: drawn from the newest ANN negatives table the index refresh published (see ``table.py``)."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

from torch.utils.data import get_worker_info as torch_worker

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

    Under ``index_refresh=sync`` the switch follows the step, not the clock: the refresh calls ``follow_schedule``
    and an example of global batch ``g`` uses the newest table published at a step <= (g - 1) // accumulation,
    which is what a single process sees (Lightning fetches one batch ahead, so the batch after a refresh was
    fetched before it). A data-loader worker building a batch before its table is out waits for it, so every
    ``num_workers`` trains on the same negatives. Async refreshes switch whenever the inferencer finishes.
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
        self.schedule: tuple[int, int] | None = None  # (refresh every n steps, batches per step) under sync
        self._loaded: dict[int, tuple[int, tables.NegativesTable]] = {}  # version -> (file mtime, table)
        self._batch_table: tuple[int, tables.NegativesTable | None] | None = None  # the last batch's choice

    def follow_schedule(self, every_n_steps: int | None, accumulate: int = 1) -> None:
        """Tables are published after every ``every_n_steps`` optimizer steps (index_refresh=sync); None: never."""
        self.schedule = None if every_n_steps is None else (int(every_n_steps), int(accumulate))
        self._batch_table = None

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

    def _load(self, version: int) -> tables.NegativesTable:
        """Table ``version``, read once per file (a resumed run may prune a version and publish it anew)."""
        mtime = tables.table_path(self.table_dir, version).stat().st_mtime_ns
        if version not in self._loaded or self._loaded[version][0] != mtime:
            self._loaded = {v: t for v, t in self._loaded.items() if v > version - 3}  # a few recent ones
            self._loaded[version] = (mtime, tables.load(self.table_dir, version))
        return self._loaded[version][1]

    def _newest_by(self, step: int) -> tuple[tables.NegativesTable | None, int]:
        """The newest published table mined at a step <= ``step`` (a table without a step, published before
        training, counts as mined before it), and the step of the newest table published at all."""
        newest = tables.latest_version(self.table_dir)
        chosen, newest_step = None, -1
        for version in range(newest or 0, 0, -1):
            if not tables.table_path(self.table_dir, version).exists():
                break
            table = self._load(version)
            table_step = int(table.meta.get("step", -1))
            newest_step = max(newest_step, table_step)
            if table_step <= step:
                chosen = table
                break
        return chosen, newest_step

    def table_for_batch(self, batch: int) -> tables.NegativesTable | None:
        """Under ``follow_schedule``: the table of global batch ``batch`` (see the class docstring), waiting in a
        data-loader worker until the refresh that precedes the batch has published it."""
        if self._batch_table is not None and self._batch_table[0] == batch:  # its other examples: no file reads
            return self._batch_table[1]
        every, accumulate = self.schedule
        step = (batch - 1) // accumulate  # the last refresh this batch follows ran after this step (-1: none)
        due = every * (step // every) if step >= every else 0
        parent, waited = os.getppid(), time.monotonic()
        while True:
            table, newest_step = self._newest_by(step)
            if due == 0 or newest_step >= due:  # final: the next refresh comes after ``step``
                self._batch_table = (batch, table)
                return table
            if torch_worker() is None:
                raise RuntimeError(f"batch {batch} needs the negatives table of the refresh at step {due}, which "
                                   f"{self.table_dir} does not hold: was the refresh skipped?")  # fmt: skip
            if os.getppid() != parent:
                raise RuntimeError("the training process is gone while this data-loader worker waited for a table")
            if time.monotonic() - waited > 60:
                log.info("batch %d waits for the refresh at step %d (%s)", batch, due, self.table_dir)
                waited = time.monotonic()
            time.sleep(0.05)

    def sample_at(self, qid: str, positives: set[str], rng: random.Random, batch: int | None) -> list[str]:
        if self.schedule is None or batch is None:
            return self.sample(qid, positives, rng)
        return self.draw(self.table_for_batch(batch), qid, positives, rng)

    def sample(self, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        return self.draw(self._current(), qid, positives, rng)

    def draw(self, table: tables.NegativesTable | None, qid: str, positives: set[str], rng: random.Random) -> list[str]:
        """``num_negatives`` from ``table``'s top ``top_k`` for ``qid`` (the warm-up sampler's while None)."""
        if table is None:
            return self.warmup.sample(qid, positives, rng)
        if qid not in table.negatives:
            raise KeyError(f"query {qid!r} is not in negatives table {table.version} ({self.table_dir})")
        pool = [did for did in table.negatives[qid][: self.top_k] if did not in positives]
        picked = rng.sample(pool, min(self.num_negatives, len(pool)))
        return picked + self.random_docs(self.num_negatives - len(picked), positives | set(picked), rng)
