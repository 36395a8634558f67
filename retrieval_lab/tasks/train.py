"""``task=train``: fit the configured model, then evaluate its best checkpoint exactly as ``task=evaluate`` does."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from retrieval_lab.callbacks.dev_eval import DevEvaluation
from retrieval_lab.loggers.setup import log_final_figures
from retrieval_lab.models.export import export_encoder
from retrieval_lab.retrievers.base import Retriever
from retrieval_lab.retrievers.colbert import ColbertRetriever
from retrieval_lab.retrievers.dense import DenseRetriever, sharded_encoding
from retrieval_lab.tasks.evaluate import check_eval_args, check_splits, evaluate_retriever, retrieval_costs
from retrieval_lab.training.fit import FitResult, fit
from retrieval_lab.utils.io import write_json

log = logging.getLogger(__name__)


def dev_evaluation(result: FitResult) -> DevEvaluation | None:
    return next((cb for cb in result.callbacks if isinstance(cb, DevEvaluation)), None)


def best_checkpoint(result: FitResult) -> str | None:
    """The weights to evaluate: the starting model's where no dev evaluation beat it, else the path the
    monitoring ModelCheckpoint kept (best dev metric), if any."""
    dev = dev_evaluation(result)
    if dev is not None and dev.start_checkpoint and dev.best()[0] == 0:
        log.warning("no checkpoint beat the starting model on dev (%s %.4f at step 0): evaluating the starting "
                    "weights, not a result of training", dev.monitor, dev.history[0][1])  # fmt: skip
        return dev.start_checkpoint
    for cb in result.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path:
            return cb.best_model_path
    return None


def load_weights(result: FitResult, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    result.model.load_state_dict(state)


def load_chosen_weights(result: FitResult, best: str | None = None) -> str | None:
    """Load the weights dev chose (``best``, else ``best_checkpoint``) into the trained module; returns their
    path."""
    best = best or best_checkpoint(result)
    if best:
        load_weights(result, best)
    else:
        log.warning("no best checkpoint (no dev evaluation ran): evaluating the final weights")
    return best


def training_summary(result: FitResult, best: str | None, seconds: float) -> dict:
    dev = dev_evaluation(result)
    summary = {"steps": result.trainer.global_step, "fit_seconds": round(seconds, 1), "best_checkpoint": best}
    if dev is not None and dev.history:
        step, value = dev.best()
        summary.update({"dev_metric": dev.metric, "best_dev_value": value, "best_dev_step": step})
        if dev.history[0][0] == 0:  # the starting model's dev value: every results table carries it
            summary["start_dev_value"] = dev.history[0][1]
        summary["dev_history"] = [list(sv) for sv in dev.history]
    return summary


def evaluate_best(cfg: DictConfig, result: FitResult, splits, metrics, top_k: int, export: bool, start: float,
                  ignore_identical_ids: bool = True):  # fmt: skip
    """Load the best checkpoint (or the starting weights, where none beat them on dev), rank the dev pool and
    every split with it, write the outputs: on rank 0, the other DDP ranks encoding their shares of each corpus
    for a dense retriever (``retriever.shard_across_ranks``)."""
    seconds = time.perf_counter() - start
    world = result.trainer.world_size
    chosen = best_checkpoint(result) if result.trainer.is_global_zero else None
    chosen = result.trainer.strategy.broadcast(chosen, src=0) if world > 1 else chosen  # one choice for all ranks
    dataset = result.datamodule.dataset
    retriever_class = get_class(cfg.retriever._target_)
    sharded = world > 1 and issubclass(retriever_class, DenseRetriever) and cfg.retriever.get("shard_across_ranks")
    if not result.trainer.is_global_zero:
        if sharded:  # the same index() calls, in the same order, as rank 0's evaluate_retriever makes
            if chosen:
                load_weights(result, chosen)
            retriever = instantiate(cfg.retriever, encoder=result.model.encoder)
            with sharded_encoding():
                for corpus in [result.datamodule.dev.corpus] + ([dataset.corpus] if splits else []):
                    retriever.index(corpus)
        return {}
    best = load_chosen_weights(result, chosen)
    output_dir = Path(cfg.paths.output_dir)
    check_splits(splits, dataset.qrels, dataset.name)
    retriever: Retriever = instantiate(cfg.retriever, encoder=result.model.encoder)
    args = {"output_dir": output_dir, "ignore_identical_ids": ignore_identical_ids}
    # The chosen weights on the dev pool first (what chose them; per_query.dev.json for paired tests), then test.
    with sharded_encoding() if sharded else contextlib.nullcontext():  # the other ranks encode their shares
        results: dict = evaluate_retriever(retriever, result.datamodule.dev, ["dev"], metrics, top_k, **args)
        if splits:  # task.splits=[]: dev only (choosing a recipe without reading test); no corpus encoding
            results |= evaluate_retriever(retriever, dataset, splits, metrics, top_k, **args)
    results["train"] = training_summary(result, best, seconds)
    if costs := retrieval_costs(retriever):
        results["retrieval"] = costs
    numbers = {f"train/{k}": v for k, v in results["train"].items() if isinstance(v, int | float)}
    figures = {f"{s}/{k}": v for s in splits for k, v in results[s].items()}
    log_final_figures(result.loggers, figures, result.trainer.global_step, summary_extra=numbers)
    if export:
        results["train"]["export"] = export_encoder(result.model.encoder, output_dir / "export")
    write_json(output_dir / "metrics.json", results)
    return results


def run(
    cfg: DictConfig,
    splits: Sequence[str],
    metrics: Sequence[str],
    top_k: int,
    export: bool = True,
    ignore_identical_ids: bool = True,
) -> dict:
    """Entry for ``task=train``; resumes from ``cfg.ckpt_path`` when set. ``splits=[]`` evaluates the chosen
    weights on the dev pool only, for choosing recipes on dev without reading test."""
    check_eval_args(splits, metrics, top_k, dev_only=True)
    retriever = get_class(cfg.retriever._target_)
    if getattr(get_class(cfg.model._target_), "multi_vector", False):
        if not issubclass(retriever, ColbertRetriever):
            raise ValueError(f"task=train with a late-interaction model ({cfg.model._target_}) evaluates it with "
                             f"retriever=colbert, not {cfg.retriever._target_}")  # fmt: skip
    elif not issubclass(retriever, DenseRetriever):
        raise ValueError(f"task=train evaluates the trained encoder: use retriever=dense, not {cfg.retriever._target_}")
    start = time.perf_counter()
    _, results = fit(
        cfg,
        ckpt_path=cfg.get("ckpt_path"),
        then=lambda result: evaluate_best(cfg, result, splits, metrics, top_k, export, start, ignore_identical_ids),
    )
    return results
