"""Dev evaluation during training: the lab's evaluation code on the data module's dev pool, every N steps."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from retrieval_lab.eval.metrics import parse_metric
from retrieval_lab.index.encode import PRECISIONS, resolve_precision
from retrieval_lab.retrievers.colbert import ColbertRetriever
from retrieval_lab.retrievers.dense import DenseRetriever
from retrieval_lab.tasks.evaluate import evaluate_retriever

log = logging.getLogger(__name__)


class DevEvaluation(pl.Callback):
    """Logs ``dev/<metric>`` at step 0 (the starting model), every ``every_n_steps`` optimizer steps and after
    the last step.

    The starting model is a baseline: its weights are saved as ``start.ckpt`` beside the best checkpoint, and
    where no later evaluation beats it on dev, ``task=train`` evaluates the starting weights (fine-tuning that
    made the model worse is not reported as a result of training).

    It ranks ``trainer.datamodule.dev`` (see ``RetrievalDataModule``) with a ``DenseRetriever`` over the
    encoder being trained and scores it with ``evaluate_retriever``, the code ``task=evaluate`` uses. Rank 0
    evaluates and broadcasts the value, so every rank logs the same number and ModelCheckpoint decides alike.
    Lightning moves ModelCheckpoint callbacks after this one, so they see the fresh value at the same step.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        metric: str = "ndcg@10",
        batch_size: int = 64,
        precision: str = "auto",
        show_progress: bool = False,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.dev_eval.every_n_steps must be >= 1, got {every_n_steps}")
        self.check_metric(metric)
        if precision not in PRECISIONS:
            raise ValueError(f"callbacks.dev_eval.precision must be one of {PRECISIONS}, got {precision!r}")
        self.every_n_steps, self.metric, self.batch_size = every_n_steps, metric, batch_size
        self.precision, self.show_progress = precision, show_progress
        self.history: list[tuple[int, float]] = []
        self.start_checkpoint: str | None = None

    @staticmethod
    def check_metric(metric: str) -> None:
        parse_metric(metric)

    @property
    def monitor(self) -> str:
        return f"dev/{self.metric}"

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        dev = trainer.datamodule.dev
        value = 0.0
        if trainer.is_global_zero:
            start = time.perf_counter()
            args = {"batch_size": self.batch_size, "query_batch_size": self.batch_size, "precision": self.precision,
                    "device": str(pl_module.device), "show_progress": self.show_progress}  # fmt: skip
            if pl_module.encoder.multi_vector:  # late interaction: exact MaxSim over the (small) dev pool
                retriever = ColbertRetriever(pl_module.encoder, mode="exact", **args)
            else:
                retriever = DenseRetriever(pl_module.encoder, **args)
            _, k = parse_metric(self.metric)
            results = evaluate_retriever(retriever, dev, ["dev"], [self.metric], top_k=max(k, 100))
            value = results["dev"][self.metric]
            log.info("step %d: dev %s %.4f (%.1fs, %s)", trainer.global_step, self.metric, value,
                     time.perf_counter() - start, resolve_precision(self.precision, pl_module.device))  # fmt: skip
        return float(trainer.strategy.broadcast(value, src=0))

    def _record(self, trainer, step: int, value: float) -> None:
        self.history.append((step, value))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({self.monitor: value}, step=step)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step or self.history:  # resumed: step 0 was evaluated before
            return
        folder = next((Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath), None)
        path = (folder or Path(trainer.default_root_dir) / "checkpoints") / "start.ckpt"
        trainer.save_checkpoint(path, weights_only=True)  # every rank calls it; rank 0 writes
        self.start_checkpoint = str(path)
        self._record(trainer, 0, self._evaluate(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or (self.history and self.history[-1][0] == step):
            return
        last = step >= trainer.estimated_stepping_batches or trainer.should_stop
        if step % self.every_n_steps and not last:
            return
        value = self._evaluate(trainer, pl_module)
        # Straight to the loggers (not throttled by log_every_n_steps); self.log feeds ModelCheckpoint and the bar.
        self._record(trainer, step, value)
        pl_module.log(self.monitor, torch.tensor(value), on_step=True, on_epoch=False, prog_bar=True, logger=False)

    def best(self) -> tuple[int, float] | None:
        """``(step, value)`` of the best dev evaluation; on a tie the earliest wins, so a later checkpoint must
        beat the starting model (step 0) strictly to be chosen over it."""
        return max(self.history, key=lambda sv: sv[1]) if self.history else None

    def state_dict(self) -> dict:
        return {"history": list(self.history), "start_checkpoint": self.start_checkpoint}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(x) for x in state_dict["history"]]
        self.start_checkpoint = state_dict.get("start_checkpoint")


class StsDevEvaluation(DevEvaluation):
    """``callbacks=sts``: the same schedule, start baseline and checkpoint choice, scored by the Spearman (or
    Pearson) correlation of cosine similarities on the data module's STS dev pairs (``datamodule=sentences``)."""

    @staticmethod
    def check_metric(metric: str) -> None:
        if metric not in ("spearman", "pearson"):
            raise ValueError(f"callbacks.dev_eval.metric must be spearman or pearson for STS, got {metric!r}")

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        from retrieval_lab.data.sts import StsDataset
        from retrieval_lab.tasks.evaluate_sts import evaluate_sts

        value = 0.0
        if trainer.is_global_zero:
            start = time.perf_counter()
            dev = StsDataset("dev", {"dev": trainer.datamodule.dev_pairs})
            args = {"batch_size": self.batch_size, "precision": self.precision, "device": str(pl_module.device)}
            value = evaluate_sts(pl_module.encoder, dev, ["dev"], **args)["dev"][self.metric]
            log.info("step %d: dev %s %.4f (%.1fs, %s)", trainer.global_step, self.metric, value,
                     time.perf_counter() - start, resolve_precision(self.precision, pl_module.device))  # fmt: skip
        return float(trainer.strategy.broadcast(value, src=0))
