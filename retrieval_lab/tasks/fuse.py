"""``task=fuse``: fuse saved TREC runs with ranx and score the fused run, so a fusion sweep costs seconds, not a
corpus encoding per job.

    python -m retrieval_lab task=fuse data=scifact task.runs=[RUN_A/run.test.trec,RUN_B/run.test.trec] \
        task.method=wsum task.weights=[0.3,0.7]
    python -m retrieval_lab -m task=fuse ... task.weights=[0.1,0.9],[0.3,0.7],[0.5,0.5]     # a weight sweep

Methods and normalisations are ranx's (``ranx.fuse``: wsum, rrf, combsum, combmnz, ...; min-max, max, sum, zmuv,
rank, borda, ...); ``weights`` goes to the methods that take them, ``params`` passes anything else. The fused run
is scored with the lab's metrics on ``data``'s qrels of ``split`` (``ignore_identical_ids`` as everywhere) and
written as ``run.<split>.trec``, ``per_query.<split>.json`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from retrieval_lab.eval.metrics import checked_per_query_metrics, mean_metrics
from retrieval_lab.eval.trec import read_trec_run, write_trec_run
from retrieval_lab.loggers.setup import log_evaluation
from retrieval_lab.tasks.evaluate import check_eval_args, check_splits
from retrieval_lab.utils.instantiate import make
from retrieval_lab.utils.io import write_json

log = logging.getLogger(__name__)


def fuse_runs(runs: list[dict], method: str, norm: str, params: dict, top_k: int) -> dict[str, dict[str, float]]:
    """ranx's fusion of lab runs (``{qid: {doc: score}}``), each query cut to its ``top_k`` best."""
    from ranx import Run, fuse

    fused = fuse([Run.from_dict(r) for r in runs], norm=norm, method=method, params=params or None).to_dict()
    return {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:top_k]) for q, docs in fused.items()}


def run(
    cfg: DictConfig,
    runs: Sequence[str],
    method: str = "wsum",
    norm: str = "min-max",
    weights: Sequence[float] | None = None,
    params: dict | None = None,
    split: str = "test",
    metrics: Sequence[str] = ("ndcg@10",),
    top_k: int = 100,
    ignore_identical_ids: bool = True,
) -> dict:
    """Entry for ``task=fuse``."""

    check_eval_args([split], metrics, top_k)
    if len(runs) < 2:
        raise ValueError(f"task.runs needs at least two TREC run files to fuse, got {list(runs)}")
    if weights is not None and len(weights) != len(runs):
        raise ValueError(f"task.weights has {len(weights)} values for {len(runs)} runs")
    missing = [r for r in runs if not Path(r).is_file()]
    if missing:
        raise FileNotFoundError(f"task.runs: no such TREC run file: {missing}")
    loaded = [read_trec_run(r) for r in runs]  # malformed lines are errors naming the file and line
    dataset = make(cfg.data)
    check_splits([split], dataset.qrels, dataset.name)
    extra = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params or {})
    if weights is not None:
        extra["weights"] = list(weights)
    fused = fuse_runs(loaded, method, norm, extra, top_k)
    if ignore_identical_ids:
        fused = {q: {d: s for d, s in docs.items() if d != q} for q, docs in fused.items()}
    qrels = dataset.qrels[split]
    per_query = checked_per_query_metrics(qrels, {q: fused.get(q, {}) for q in qrels}, metrics)
    output_dir = Path(cfg.paths.output_dir)
    write_trec_run(fused, output_dir / f"run.{split}.trec")
    write_json(output_dir / f"per_query.{split}.json", per_query)
    results = {split: mean_metrics(per_query), "fusion": {"runs": list(runs), "method": method, "norm": norm,
                                                          "params": extra}}  # fmt: skip
    log.info("%s %s fused (%s, %s): %s", dataset.name, split, method, norm, results[split])
    write_json(output_dir / "metrics.json", results)
    log_evaluation(cfg, results, [split], job_type="fuse")
    return results
