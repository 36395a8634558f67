"""``index_refresh=sync``: re-encode the corpus with the current weights and publish fresh ANN negatives."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from retrieval_lab.index.encode import PRECISIONS, encode_texts
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.ance import AnnNegatives
from retrieval_lab.negatives.bm25 import BM25Negatives
from retrieval_lab.negatives.mining import mine_ann_negatives, table_overlap

log = logging.getLogger(__name__)


class SyncIndexRefresh(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (never when None) training pauses while rank 0 encodes the corpus
    with the current weights, indexes it, mines the training queries' ``top_k`` (positives removed) and
    publishes them as the next table version in ``table_dir``, which ``negatives=ance`` reads. Other ranks wait
    at the broadcast of the result. No refresh runs after the last step, where nothing would use it. The one
    batch Lightning has already prefetched when a refresh ends still carries the previous table's negatives.

    Logged per refresh under ``index_refresh/``: the version, seconds to encode / index / mine, the mean rank
    of the positives over the whole corpus and the share ranked within ``top_k``, the overlap of the new
    negatives with the BM25 ones (where the sampler or its warm-up is BM25) and with the previous table.

    The schedule (last refresh step, version, history) is in ``state_dict``; a resumed run continues it and
    first removes any table its predecessor published after the checkpoint it resumes from.
    """

    def __init__(
        self,
        table_dir: str | Path,
        every_n_steps: int | None = 20,
        top_k: int = 200,
        batch_size: int = 64,
        query_batch_size: int = 256,
        precision: str = "auto",
        index_factory: str = "Flat",
        show_progress: bool = False,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"index_refresh.every_n_steps must be >= 1 or null (never), got {every_n_steps}")
        if top_k < 1:
            raise ValueError(f"index_refresh.top_k must be >= 1, got {top_k}")
        for key, value in (("batch_size", batch_size), ("query_batch_size", query_batch_size)):
            if value < 1:
                raise ValueError(f"index_refresh.{key} must be >= 1, got {value}")
        if precision not in PRECISIONS:
            raise ValueError(f"index_refresh.precision must be one of {PRECISIONS}, got {precision!r}")
        self.table_dir, self.every_n_steps, self.top_k = Path(table_dir), every_n_steps, top_k
        self.mine_args = {
            "batch_size": batch_size, "query_batch_size": query_batch_size, "precision": precision,
            "index_factory": index_factory, "show_progress": show_progress,
        }  # fmt: skip
        self.version, self.last_step = 0, 0
        self.history: list[dict] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = trainer.datamodule.negatives
        if isinstance(sampler, AnnNegatives):
            if sampler.table_dir.resolve() != self.table_dir.resolve():
                raise ValueError(
                    f"negatives.table_dir ({sampler.table_dir}) is not index_refresh.table_dir ({self.table_dir}): "
                    "the sampler would never see the refreshed tables"
                )
        else:
            log.warning("negatives=%s does not read ANN tables: index_refresh only mines them and logs statistics",
                        type(sampler).__name__)  # fmt: skip
        probe = encode_texts(pl_module.encoder, ["probe"], "queries", precision="fp32", show_progress=False)
        try:
            FaissIndex(probe.shape[1], self.mine_args["index_factory"])
        except ValueError as err:
            raise ValueError(f"index_refresh.index_factory: {err}") from None
        train_data = trainer.datamodule.train_data
        self.corpus = train_data.corpus
        self.queries = {ex.qid: train_data.queries[ex.qid] for ex in train_data.examples}
        self.positives = {ex.qid: set(ex.positives) for ex in train_data.examples}
        if trainer.is_global_zero:  # a fresh run starts from no table, a resumed one from its checkpoint's
            tables.prune(self.table_dir, self.version)
        trainer.strategy.barrier("index_refresh_prune")
        if isinstance(sampler, AnnNegatives):
            sampler.reload()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step == 0 or step % self.every_n_steps or step == self.last_step:
            return
        if step >= trainer.estimated_stepping_batches:
            return
        self.refresh(trainer, pl_module)

    def refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Mine and publish the next version now; returns what it logged."""
        step, record = trainer.global_step, {}
        sampler = trainer.datamodule.negatives
        if trainer.is_global_zero:
            record = self._mine_and_publish(step, pl_module, sampler)
            for logger in trainer.loggers:
                logger.log_metrics({f"index_refresh/{k}": v for k, v in record.items() if k != "step"}, step=step)
        record = trainer.strategy.broadcast(record, src=0)  # the other ranks wait here while rank 0 mines
        self.version, self.last_step = record["version"], step
        self.history.append(record)
        if isinstance(sampler, AnnNegatives):
            sampler.reload()
        return record

    def _mine_and_publish(self, step: int, pl_module: pl.LightningModule, sampler) -> dict:
        mined = mine_ann_negatives(pl_module.encoder, self.corpus, self.queries, self.positives, self.top_k,
                                   device=pl_module.device, **self.mine_args)  # fmt: skip
        version = self.version + 1
        record = {"step": step, "version": version} | {f"{k}_s": round(v, 3) for k, v in mined.seconds.items()}
        record["positive_mean_rank"] = mined.positive_mean_rank
        record["positives_in_top_k"] = sum(r <= self.top_k for r in mined.positive_ranks) / len(mined.positive_ranks)
        bm25 = sampler if isinstance(sampler, BM25Negatives) else getattr(sampler, "warmup", None)
        if isinstance(bm25, BM25Negatives):
            record["bm25_overlap"] = table_overlap(mined.negatives, bm25.candidates)
        if self.version:
            previous = tables.load(self.table_dir, self.version).negatives
            record["previous_overlap"] = table_overlap(mined.negatives, previous)
        tables.publish(self.table_dir, version, mined.negatives, meta=dict(record))
        log.info("index refresh at step %d: %s", step, record)
        return record

    def state_dict(self) -> dict:
        return {"version": self.version, "last_step": self.last_step, "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.version, self.last_step = state_dict["version"], state_dict["last_step"]
        self.history = [dict(r) for r in state_dict["history"]]
