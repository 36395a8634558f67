"""The ANCE inferencer: a separate OS process that mines ANN negatives from a weights snapshot.

``index_refresh=async`` writes the encoder (``torch.save`` of the whole module, so the child needs no config)
and, once per run, the corpus and training queries; then it starts ``run_job`` in a fresh ``spawn`` process.
The child encodes, indexes and mines with the same ``mine_ann_negatives`` as the synchronous refresh, writes
the table (not yet the latest: the trainer promotes it at a step boundary) and last a small status file. A
child whose trainer died (its parent changed) stops without writing, so an orphan of a killed run can never
publish into the folder a resumed run uses.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.mining import mine_ann_negatives
from retrieval_lab.utils.io import atomic_file, write_json


@dataclass(frozen=True)
class InferencerJob:
    snapshot: str  # torch.save'd encoder module
    inputs: str  # pickle of {"corpus", "queries", "positives"}
    table_dir: str
    version: int
    step: int  # the optimizer step the snapshot was taken at
    top_k: int
    mine_args: dict
    device: str
    num_threads: int | None
    parent_pid: int

    @property
    def status_path(self) -> Path:
        return Path(self.table_dir) / f"status-v{self.version:05d}.json"

    @property
    def heartbeat_path(self) -> Path:
        return Path(self.table_dir) / f"heartbeat-v{self.version:05d}.json"


def beat(job: InferencerJob, phase: str) -> None:
    """Record the phase the child entered and when (the trainer names it if it has to kill a hung child)."""
    write_json(job.heartbeat_path, {"phase": phase, "time": time.time(), "pid": os.getpid()})


def read_heartbeat(job: InferencerJob) -> dict | None:
    try:
        return json.loads(job.heartbeat_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_inputs(path: str | Path, corpus, queries, positives) -> Path:
    """The data every refresh mines over, written once per run (atomically)."""
    with atomic_file(path) as tmp, tmp.open("wb") as handle:
        pickle.dump({"corpus": corpus, "queries": queries, "positives": positives}, handle, protocol=5)
    return Path(path)


def write_snapshot(path: str | Path, encoder: torch.nn.Module) -> Path:
    """A CPU copy of the encoder, module and weights, written atomically."""
    with atomic_file(path) as tmp:
        torch.save(encoder, tmp)
    return Path(path)


def _parent_alive(job: InferencerJob) -> bool:
    return os.getppid() == job.parent_pid


def run_job(job: InferencerJob) -> None:
    """Process entry point: mine, write table ``job.version`` and its status; errors go to the status file."""
    start = time.perf_counter()
    try:
        beat(job, "loading the snapshot")
        if job.num_threads:
            torch.set_num_threads(job.num_threads)
        encoder = torch.load(job.snapshot, map_location=job.device, weights_only=False)
        encoder.eval()
        with open(job.inputs, "rb") as handle:
            inputs = pickle.load(handle)
        beat(job, "encoding the corpus and mining")
        mined = mine_ann_negatives(encoder, inputs["corpus"], inputs["queries"], inputs["positives"], job.top_k,
                                   device=job.device, **job.mine_args)  # fmt: skip
        if not _parent_alive(job):
            return  # the trainer is gone: publish nothing
        result = {
            "ok": True,
            "version": job.version,
            "step": job.step,
            "seconds": {k: round(v, 3) for k, v in mined.seconds.items()},
            "positive_mean_rank": mined.positive_mean_rank,
            "positives_in_top_k": mined.share_ranked_within(job.top_k),
            "total_s": round(time.perf_counter() - start, 3),
        }
        beat(job, "writing the table")
        tables.write(job.table_dir, job.version, mined.negatives, meta={"step": job.step, "async": True})
        write_json(job.status_path, result)
    except Exception as err:  # reported to the trainer, which keeps training on the previous table
        if _parent_alive(job):
            error = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            write_json(job.status_path, {"ok": False, "version": job.version, "step": job.step} | error)
        raise SystemExit(1) from None


def read_status(job: InferencerJob) -> dict | None:
    try:
        return json.loads(job.status_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
