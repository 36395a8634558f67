"""``task=test``: a finished dev-only training run (``task=train task.splits=[]``) evaluated on test, once.

Choosing a recipe on dev and reading test once per final configuration is the lab's protocol: train every arm
with ``task.splits=[]`` (its dev evaluation chooses the checkpoint), pick on dev, then run
``python -m retrieval_lab task=test task.run_dir=<the chosen run>``. The run's own resolved ``config.yaml``
rebuilds its model, data and retriever; the weights are the checkpoint dev chose (``metrics.json``'s
``train.best_checkpoint``: the best dev step, or the starting weights where no step beat them). Test metrics,
``run.test.trec`` and ``per_query.test.json`` go into the run's folder beside its dev results, so reports and
paired tests read it like any trained run. A run that already holds test metrics is refused unless
``task.force=true``: a second look at test is a choice made on test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval_lab.data.beir import RetrievalDataset
from retrieval_lab.loggers.setup import log_evaluation
from retrieval_lab.retrievers.base import Retriever
from retrieval_lab.tasks.evaluate import check_eval_args, check_splits, evaluate_retriever, retrieval_costs
from retrieval_lab.utils.io import write_json

log = logging.getLogger(__name__)


def chosen_encoder_weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors from a training checkpoint (the module's ``encoder.`` entries)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not weights:
        raise ValueError(f"{checkpoint} holds no encoder weights (no 'encoder.' entries in its state_dict)")
    return weights


def run(
    cfg: DictConfig,
    run_dir: str | None,
    splits: Sequence[str],
    metrics: Sequence[str],
    top_k: int,
    ignore_identical_ids: bool = True,
    force: bool = False,
) -> dict:
    """Entry for ``task=test``; returns the run's metrics with the new splits added."""
    check_eval_args(splits, metrics, top_k)
    if not run_dir:
        raise ValueError("task=test needs task.run_dir: the folder of a finished task=train run")
    folder = Path(run_dir)
    for name in ("config.yaml", "metrics.json"):
        if not (folder / name).is_file():
            raise ValueError(f"task.run_dir={folder} has no {name}: is it a finished task=train run?")
    saved = OmegaConf.load(folder / "config.yaml")
    if not str(saved.task.get("_target_", "")).startswith("retrieval_lab.tasks.train."):
        raise ValueError(f"{folder} is a {saved.task.get('_target_')} run; task=test evaluates task=train runs")
    results = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    if (done := [s for s in splits if s in results]) and not force:
        raise ValueError(f"{folder / 'metrics.json'} already holds {done}: test is read once per configuration "
                         "(task.force=true evaluates again)")  # fmt: skip
    checkpoint = (results.get("train") or {}).get("best_checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise ValueError(f"{folder / 'metrics.json'} names no dev-chosen checkpoint that exists ({checkpoint!r})")
    dataset: RetrievalDataset = instantiate(saved.data)
    check_splits(splits, dataset.qrels, dataset.name)
    encoder = instantiate(saved.model)
    encoder.load_state_dict(chosen_encoder_weights(checkpoint))
    encoder.eval()
    retriever: Retriever = instantiate(saved.retriever, encoder=encoder)
    start = time.perf_counter()
    new = evaluate_retriever(retriever, dataset, splits, metrics, top_k, folder,
                             ignore_identical_ids=ignore_identical_ids)  # fmt: skip
    log.info("test of %s (weights %s) took %.1fs", folder, checkpoint, time.perf_counter() - start)
    results |= new
    if costs := retrieval_costs(retriever):
        results["retrieval"] = costs
    results["test_run"] = {"checkpoint": checkpoint, "by": str(Path(cfg.paths.output_dir))}
    write_json(folder / "metrics.json", results)
    log_evaluation(cfg, results, splits, job_type="test", config=saved)
    return results
