"""``task=train_sts``: train an encoder without labels on sentences (``datamodule=sentences``, e.g. SG-OPT with
``objective=self_guided``), choose the checkpoint by STS dev correlation (``callbacks=sts``; the starting model is
the step-0 baseline), then score the chosen weights on the STS splits and on other STS datasets (``task.also``).

    python -m retrieval_lab experiment=sgopt_stsb

Writes ``metrics.json``: ``{"dev": {...}, "test": {...}, "<other>": {"test": {...}}, "train": {...}}`` (Spearman,
Pearson, pairs per split), the per-pair predictions (``sts.<split>.tsv``; ``sts.<other>.test.tsv`` for each of
``task.also``) and the exported encoder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from retrieval_lab.loggers.setup import log_final_figures
from retrieval_lab.models.export import export_encoder
from retrieval_lab.tasks.evaluate_sts import check_sts_args, evaluate_sts
from retrieval_lab.tasks.train import load_chosen_weights, training_summary
from retrieval_lab.training.fit import fit
from retrieval_lab.utils.instantiate import make
from retrieval_lab.utils.io import write_json


def _evaluate(cfg: DictConfig, result, splits, also: Mapping, encode: dict, export: bool, start: float) -> dict:

    if not result.trainer.is_global_zero:
        return {}
    seconds = time.perf_counter() - start
    best = load_chosen_weights(result)
    output_dir = Path(cfg.paths.output_dir)
    encoder = result.model.encoder
    sts = result.datamodule.sts
    results: dict = evaluate_sts(encoder, sts, [result.datamodule.dev_split, *splits], output_dir, **encode)
    for name, conf in (also or {}).items():
        results[name] = evaluate_sts(encoder, make(conf), ["test"], output_dir, name=name, **encode)
    results["train"] = training_summary(result, best, seconds)
    flat = {f"{s}/{k}": v for s, m in results.items() if s != "train" for k, v in _flatten(m).items()}
    log_final_figures(result.loggers, flat, result.trainer.global_step)
    if export:
        results["train"]["export"] = export_encoder(encoder, output_dir / "export")
    write_json(output_dir / "metrics.json", results)
    return results


def _flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}/")
        elif isinstance(value, int | float):
            out[f"{prefix}{key}"] = value
    return out


def run(cfg: DictConfig, splits: Sequence[str] = ("test",), also: Mapping | None = None, batch_size: int = 64,
        precision: str = "auto", side: str = "docs", export: bool = True) -> dict:  # fmt: skip
    """Entry for ``task=train_sts``; resumes from ``cfg.ckpt_path`` when set."""

    check_sts_args(splits, side)
    if "sentences" not in str(cfg.datamodule.get("_target_", "")).lower():
        raise ValueError("task=train_sts trains on unlabeled sentences: use datamodule=sentences")
    start = time.perf_counter()
    encode = {"batch_size": batch_size, "precision": precision, "side": side}
    _, results = fit(cfg, ckpt_path=cfg.get("ckpt_path"),
                     then=lambda r: _evaluate(cfg, r, list(splits), also, encode, export, start))  # fmt: skip
    return results
