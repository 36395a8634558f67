"""``index_refresh=sync``: re-encode the corpus with the current weights and publish fresh ANN negatives."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import get_method

from retrieval_lab.index.encode import PRECISIONS, encode_texts, from_rank_0, gather_rows, resolve_precision
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.index.multi_vector import MultiVectorIndex, encode_token_vectors
from retrieval_lab.negatives import inferencer
from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.ance import AnnNegatives
from retrieval_lab.negatives.bm25 import BM25Negatives
from retrieval_lab.negatives.mining import encode_corpus, mine_ann_negatives, table_overlap

log = logging.getLogger(__name__)


class SyncIndexRefresh(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (never when None) training pauses while the corpus is encoded
    with the current weights, indexed, the training queries' ``top_k`` mined (positives removed) and published
    as the next table version in ``table_dir``, which ``negatives=ance`` reads. Under DDP every rank encodes a
    shard of the corpus, rank 0 gathers the vectors, mines once and broadcasts the result. No refresh runs
    after the last step, where nothing would use it. The one batch Lightning has already prefetched when a
    refresh ends still carries the previous table's negatives; the sampler switches by batch number (``setup``
    hands it the schedule), so data-loader workers, which build batches further ahead, switch at the same batch.

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
        doc_max_length: int | None = None,
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
        if doc_max_length is not None and doc_max_length < 2:
            raise ValueError(f"index_refresh.doc_max_length must be at least 2 or null, got {doc_max_length}")
        self.table_dir, self.every_n_steps, self.top_k = Path(table_dir), every_n_steps, top_k
        self.mine_args = {
            "batch_size": batch_size, "query_batch_size": query_batch_size, "precision": precision,
            "index_factory": index_factory, "show_progress": show_progress, "doc_max_length": doc_max_length,
        }  # fmt: skip
        self.version, self.last_step = 0, 0
        self.history: list[dict] = []

    steps_known = True  # tables come out at known steps: the sampler switches by batch number, not by the clock

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before the data loaders (and their workers) exist: tell the sampler when tables will come."""
        sampler = getattr(trainer.datamodule, "negatives", None)
        if self.steps_known and isinstance(sampler, AnnNegatives):
            sampler.follow_schedule(self.every_n_steps, trainer.accumulate_grad_batches)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self._sampler = trainer.datamodule.negatives
        if isinstance(sampler, AnnNegatives):
            if sampler.table_dir.resolve() != self.table_dir.resolve():
                raise ValueError(
                    f"negatives.table_dir ({sampler.table_dir}) is not index_refresh.table_dir ({self.table_dir}): "
                    "the sampler would never see the refreshed tables"
                )
        else:
            log.warning("negatives=%s does not read ANN tables: index_refresh only mines them and logs statistics",
                        type(sampler).__name__)  # fmt: skip
        self._check_index_factory(pl_module.encoder)
        train_data = trainer.datamodule.train_data
        self.corpus = train_data.corpus
        self.queries = {ex.qid: train_data.queries[ex.qid] for ex in train_data.examples}
        self.positives = {ex.qid: set(ex.positives) for ex in train_data.examples}
        if trainer.is_global_zero:  # a fresh run starts from no table, a resumed one from its checkpoint's
            tables.prune(self.table_dir, self.version)
        trainer.strategy.barrier("index_refresh_prune")
        if isinstance(sampler, AnnNegatives):
            sampler.reload()

    def _check_index_factory(self, encoder) -> None:
        """Refuse a bad ``index_factory`` before training: a FAISS factory over the encoder's vectors (ColBERT:
        over its token vectors, where "auto" sizes an IVF to the corpus and "Flat" mines by exact MaxSim)."""
        factory, args = self.mine_args["index_factory"], {"precision": "fp32", "show_progress": False}
        try:
            if getattr(encoder, "multi_vector", False):
                MultiVectorIndex(encode_token_vectors(encoder, ["probe"], "queries", **args)[0].shape[1], factory)
            else:
                FaissIndex(encode_texts(encoder, ["probe"], "queries", **args).shape[1], factory)
        except ValueError as err:
            raise ValueError(f"index_refresh.index_factory: {err}") from None

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
        doc_vectors, shard_s = self._encode_shards(trainer, pl_module)
        if trainer.is_global_zero:
            sharded = None if doc_vectors is None else (doc_vectors, shard_s, trainer.world_size)
            record = self._mine_and_publish(step, pl_module, sampler, sharded)
            self._log(trainer, {k: v for k, v in record.items() if k != "step"}, step)
        record = trainer.strategy.broadcast(record, src=0)  # the other ranks wait here while rank 0 mines
        self.version, self.last_step = record["version"], step
        self.history.append(record)
        if isinstance(sampler, AnnNegatives):
            sampler.reload()
        return record

    def _encode_shards(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[np.ndarray | None, float]:
        """Under DDP every rank encodes every ``world_size``-th document and rank 0 gathers the vectors (in
        corpus order); with one process the corpus is encoded inside ``mine_ann_negatives``."""
        world, rank = trainer.world_size, trainer.global_rank
        if world == 1 or pl_module.encoder.multi_vector:  # token vectors: rank 0 encodes (and indexes) alone
            return None, 0.0
        start = time.perf_counter()
        doc_ids = list(self.corpus)
        precision = from_rank_0(resolve_precision(self.mine_args["precision"], pl_module.device), world)
        shard = encode_corpus(pl_module.encoder, self.corpus, doc_ids[rank::world], self.mine_args["batch_size"],
                              self.mine_args["doc_max_length"], device=pl_module.device, precision=precision,
                              show_progress=self.mine_args["show_progress"])  # fmt: skip
        vectors = gather_rows(shard, len(doc_ids), rank, world)
        return vectors, (time.perf_counter() - start if vectors is not None else 0.0)

    def _mine_and_publish(self, step: int, pl_module: pl.LightningModule, sampler, sharded=None) -> dict:
        """``sharded``: (gathered document vectors, seconds the ranks took to encode them, number of ranks)."""
        doc_vectors, shard_s, ranks = sharded or (None, 0.0, 1)
        mined = mine_ann_negatives(pl_module.encoder, self.corpus, self.queries, self.positives, self.top_k,
                                   device=pl_module.device, doc_vectors=doc_vectors, **self.mine_args)  # fmt: skip
        mined.seconds["encode"] += shard_s
        version = self.version + 1
        record = {"step": step, "version": version} | {f"{k}_s": round(v, 3) for k, v in mined.seconds.items()}
        record["encode_ranks"] = ranks
        record["positive_mean_rank"] = mined.positive_mean_rank
        record["positives_in_top_k"] = mined.share_ranked_within(self.top_k)
        record |= self._overlaps(mined.negatives, sampler)
        tables.publish(self.table_dir, version, mined.negatives, meta=dict(record))
        log.info("index refresh at step %d: %s", step, record)
        return record

    def _overlaps(self, negatives: dict[str, list[str]], sampler) -> dict:
        """Overlap of a new table with the BM25 negatives (where the sampler or its warm-up is BM25) and with
        the table in use."""
        record = {}
        bm25 = sampler if isinstance(sampler, BM25Negatives) else getattr(sampler, "warmup", None)
        if isinstance(bm25, BM25Negatives):
            record["bm25_overlap"] = table_overlap(negatives, bm25.candidates)
        if self.version:
            record["previous_overlap"] = table_overlap(negatives, tables.load(self.table_dir, self.version).negatives)
        return record

    @staticmethod
    def _log(trainer: pl.Trainer, values: dict, step: int) -> None:
        """Log ``values`` under ``index_refresh/`` from rank 0."""
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"index_refresh/{k}": v for k, v in values.items()}, step=step)

    def state_dict(self) -> dict:
        return {"version": self.version, "last_step": self.last_step, "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.version, self.last_step = state_dict["version"], state_dict["last_step"]
        self.history = [dict(r) for r in state_dict["history"]]


class AsyncIndexRefresh(SyncIndexRefresh):
    """``index_refresh=async``: training never pauses to re-encode. Every ``every_n_steps`` optimizer steps,
    rank 0 writes a snapshot of the encoder and starts an inferencer in a separate OS process
    (``negatives/inferencer.py``) that encodes the corpus from it, indexes, mines and writes the next table.
    At the first step boundary after the table is complete the trainer promotes it (``LATEST``) and the
    sampler switches; staleness (steps between the snapshot and that switch) is logged with the refresh.

    While an inferencer runs no second one starts: a refresh falling due meanwhile starts at the first step
    boundary after it ends. ``max_staleness`` (steps) bounds how old the negatives in flight may get: past
    it the trainer waits for the inferencer (null: never waits). If the inferencer fails or is killed, the
    error is logged, training goes on with the table in use, and the next scheduled refresh tries again.
    ``timeout_s`` bounds one refresh: an inferencer still running after it is killed (the log names the phase
    its heartbeat last reported) and counted as a failure, so a hung child can neither stop the refreshes nor,
    through ``max_staleness``, the training. An inferencer in flight when a checkpoint is saved is started
    again at the first step of the resumed run.

    ``device``: where the inferencer encodes; null picks the trainer's device, or the last GPU where there
    are several (so it does not share the trainer's). ``num_threads``: its CPU threads (null: torch's default).
    """

    steps_known = False  # a table comes whenever the inferencer finishes: the sampler polls for it

    def __init__(
        self,
        table_dir: str | Path,
        device: str | None = None,
        num_threads: int | None = None,
        max_staleness: int | None = None,
        timeout_s: float | None = 3600.0,
        inferencer_fn: str = "retrieval_lab.negatives.inferencer.run_job",
        **refresh_args,
    ) -> None:
        """``refresh_args``: those of ``SyncIndexRefresh`` (every_n_steps, top_k, batch sizes, precision, ...)."""
        super().__init__(table_dir, **refresh_args)
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"index_refresh.num_threads must be >= 1 or null, got {num_threads}")
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"index_refresh.max_staleness must be >= 0 or null, got {max_staleness}")
        if device is not None:
            try:
                torch.device(device)
            except RuntimeError as err:
                raise ValueError(f"index_refresh.device: {err}") from None
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"index_refresh.timeout_s must be > 0 or null, got {timeout_s}")
        self.device, self.num_threads, self.max_staleness = device, num_threads, max_staleness
        self.timeout_s, self.inferencer_fn = timeout_s, get_method(inferencer_fn)
        self.started_at = 0.0
        self.restart_pending = False  # a refresh was in flight when the checkpoint this run resumed was saved
        self.work_dir = self.table_dir / "inferencer"
        self.process: mp.process.BaseProcess | None = None
        self.job: inferencer.InferencerJob | None = None
        self.failures = 0

    @property
    def running(self) -> bool:
        return self.job is not None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.is_global_zero:
            inferencer.write_inputs(self.work_dir / "inputs.pkl", self.corpus, self.queries, self.positives)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        late = self.max_staleness is not None and self.running and step - self.job.step >= self.max_staleness
        self._collect(trainer, wait=late)
        if self.due(step, trainer.estimated_stepping_batches):
            self._launch(trainer, pl_module)

    def due(self, step: int, total_steps: float) -> bool:
        """Whether a refresh starts at this step boundary: none is running, and the schedule says so or the
        run resumed from a checkpoint saved while one was in flight."""
        if self.running or self.every_n_steps is None or step >= total_steps:
            return False
        return self.restart_pending or step - self.last_step >= self.every_n_steps

    def _inferencer_device(self, pl_module: pl.LightningModule) -> str:
        if self.device is not None:
            return self.device
        if pl_module.device.type == "cuda" and torch.cuda.device_count() > 1:
            return f"cuda:{torch.cuda.device_count() - 1}"
        return str(pl_module.device)

    def _launch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step, version = trainer.global_step, self.version + 1
        self.last_step, self.restart_pending, self.started_at = step, False, time.monotonic()
        self.job = inferencer.InferencerJob(
            snapshot=str(self.work_dir / f"snapshot-step{step:06d}.pt"), inputs=str(self.work_dir / "inputs.pkl"),
            table_dir=str(self.table_dir), version=version, step=step, top_k=self.top_k, mine_args=self.mine_args,
            device=self._inferencer_device(pl_module), num_threads=self.num_threads, parent_pid=os.getpid(),
        )  # fmt: skip
        if not trainer.is_global_zero:
            return  # only rank 0 runs the inferencer; the others learn the outcome from its broadcast
        tables.prune(self.table_dir, self.version)  # what a failed attempt at this version may have left
        self.job.status_path.unlink(missing_ok=True)
        inferencer.write_snapshot(self.job.snapshot, pl_module.encoder)
        self.job.heartbeat_path.unlink(missing_ok=True)
        self.process = mp.get_context("spawn").Process(target=self.inferencer_fn, args=(self.job,), daemon=True)
        self.process.start()
        log.info("index refresh: inferencer started for version %d from the step-%d snapshot (pid %d)",
                 version, step, self.process.pid)  # fmt: skip

    def _collect(self, trainer: pl.Trainer, wait: bool = False) -> None:
        """At a step boundary: if the inferencer has ended, switch to its table or log its failure."""
        outcome = None
        if trainer.is_global_zero and self.process is not None:
            if wait and self.process.is_alive():
                log.info("index refresh: waiting for the inferencer (max_staleness %s reached)", self.max_staleness)
                self.process.join(None if self.timeout_s is None else max(0.0, self._deadline() - time.monotonic()))
            if self.process.is_alive() and self.timeout_s is not None and time.monotonic() >= self._deadline():
                outcome = self._kill_hung()
            elif not self.process.is_alive():
                outcome = self._outcome()
        outcome = trainer.strategy.broadcast(outcome, src=0)
        if outcome is None:
            return
        step, self.job = trainer.global_step, None
        if outcome["ok"]:
            self._switch(trainer, outcome)
        else:
            self.failures += 1
            in_use = self.version or "none (warm-up)"
            log.error("index refresh: the inferencer for version %d (snapshot at step %d) failed: %s. Training "
                      "goes on with negatives table %s; the next refresh tries again.",
                      outcome["version"], outcome["step"], outcome["error"], in_use)  # fmt: skip
            self._log(trainer, {"failures": self.failures}, step)

    def _deadline(self) -> float:
        return self.started_at + self.timeout_s

    def _kill_hung(self) -> dict:
        """The inferencer outlived ``timeout_s``: kill it and report where its heartbeat says it was."""
        job = self.job
        self.stop()  # kills and joins the process, removes its snapshot
        heartbeat = inferencer.read_heartbeat(job)
        where = "no heartbeat: it never started its work"
        if heartbeat:
            where = f"last heartbeat: {heartbeat['phase']!r}, {time.time() - heartbeat['time']:.0f} s before"
        job.status_path.unlink(missing_ok=True)
        job.heartbeat_path.unlink(missing_ok=True)
        tables.prune(job.table_dir, self.version)  # a table it may have begun
        return {"ok": False, "version": job.version, "step": job.step,
                "error": f"no result within index_refresh.timeout_s={self.timeout_s} s, killed ({where})"}  # fmt: skip

    def _outcome(self) -> dict:
        job, process = self.job, self.process
        process.join()
        self.process = None
        Path(job.snapshot).unlink(missing_ok=True)
        status = inferencer.read_status(job)
        failed = {"ok": False, "version": job.version, "step": job.step}
        if status is None or (status["ok"] and process.exitcode != 0):
            status = failed | {"error": f"the inferencer process ended with exit code {process.exitcode}, no result"}
        elif status["ok"] and not tables.table_path(job.table_dir, job.version).exists():
            status = failed | {"error": "its table is missing"}
        job.status_path.unlink(missing_ok=True)
        job.heartbeat_path.unlink(missing_ok=True)
        if not status["ok"]:
            return status
        sampler = self._sampler
        new = tables.load(job.table_dir, job.version).negatives
        record = {"version": job.version, "snapshot_step": job.step}
        record |= {f"{k}_s": v for k, v in status["seconds"].items()} | {"inferencer_total_s": status["total_s"]}
        record |= {k: status[k] for k in ("positive_mean_rank", "positives_in_top_k")}
        record |= self._overlaps(new, sampler)
        tables.promote(job.table_dir, job.version)
        return {"ok": True} | record

    def _switch(self, trainer: pl.Trainer, outcome: dict) -> None:
        step = trainer.global_step
        record = {k: v for k, v in outcome.items() if k != "ok"} | {
            "step": step,
            "staleness": step - outcome["snapshot_step"],
        }
        self.version = record["version"]
        self.history.append(record)
        if isinstance(self._sampler, AnnNegatives):
            self._sampler.reload()
        log.info("index refresh at step %d: %s", step, record)
        self._log(trainer, {k: v for k, v in record.items() if k != "step"}, step)

    def stop(self) -> None:
        """Stop a running inferencer (at the end of training, or on an error)."""
        if self.process is not None:
            self.process.kill()
            self.process.join()
            Path(self.job.snapshot).unlink(missing_ok=True)
        self.process, self.job = None, None

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stop()

    def state_dict(self) -> dict:
        in_flight = self.job.step if self.job is not None else None
        return super().state_dict() | {"failures": self.failures, "in_flight_step": in_flight}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.failures = state_dict.get("failures", 0)
        self.restart_pending = state_dict.get("in_flight_step") is not None
