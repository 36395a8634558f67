"""The Hydra entry point: compose ``conf/config.yaml``, then run the selected ``task``.

``fit(cfg)`` is the training pipeline ``task=train`` runs: it instantiates the pieces in one fixed order,
datamodule, model, callbacks, loggers, trainer, then fits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval_lab.loggers.setup import finish_loggers, instantiate_loggers, log_run_config
from retrieval_lab.pretrain.stage import init_encoder
from retrieval_lab.training.datamodule import RetrievalDataModule
from retrieval_lab.training.module import RetrievalModule
from retrieval_lab.utils.io import atomic_write_text, write_json
from retrieval_lab.utils.provenance import run_info
from retrieval_lab.utils.seed import seed_everything

log = logging.getLogger(__name__)
T = TypeVar("T")


def train(cfg: DictConfig) -> dict:
    """Run ``cfg.task`` on a composed config; returns the metrics it wrote to ``metrics.json``."""
    seed_everything(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    if (run_dir := cfg.task.get("run_dir")) and Path(run_dir).resolve() == output_dir.resolve():
        raise ValueError(f"task.run_dir={run_dir} is this command's own output folder (paths.output_dir), whose "
                         "config.yaml it would overwrite: give the command a folder of its own")  # fmt: skip
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(output_dir / "run_info.json", run_info())  # the commit and package versions behind the numbers
    task = instantiate(cfg.task)
    return task(cfg)


@dataclass
class FitResult:
    datamodule: RetrievalDataModule
    model: RetrievalModule
    callbacks: list[pl.Callback]
    loggers: list
    trainer: pl.Trainer


def make(conf: DictConfig, **kwargs):
    """``instantiate``, surfacing a component's own ``ValueError`` (which names the config key) unwrapped."""
    try:
        return instantiate(conf, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[pl.Callback]:
    return [make(conf) for conf in (callbacks_cfg or {}).values() if conf is not None]


def fit(
    cfg: DictConfig, ckpt_path: str | None = None, then: Callable[[FitResult], T] | None = None
) -> tuple[FitResult, T | None]:
    """Datamodule, model, callbacks, loggers, trainer, then ``trainer.fit``, then ``then(result)`` (the test
    evaluation) while the loggers are still open; wandb is finished in a ``finally``.

    Every constructor checks its own values and no data is read before ``fit`` (the data module loads the
    dataset in ``setup``), so a bad config value fails in seconds.
    """
    negatives = make(cfg.negatives)
    datamodule = make(cfg.datamodule)(dataset=instantiate(cfg.data, _partial_=True), negatives=negatives)
    objective = make(cfg.objective)
    encoder = make(cfg.model)
    init_encoder(cfg, encoder)  # init_from, or the (cached) pre-training stage of pretrain_task
    model = make(cfg.module)(encoder=encoder, objective=objective)
    trainer_args = _grad_cache_trainer_args(cfg, model) | _precision_trainer_args(cfg)
    datamodule.bind_encoder(encoder)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if cfg.get("index_refresh") is not None:
        callbacks.append(make(cfg.index_refresh))
    loggers = instantiate_loggers(cfg.get("logger"))
    failed = True
    try:
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_args)
        log_run_config(loggers, cfg)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        result = FitResult(datamodule, model, callbacks, loggers, trainer)
        after = then(result) if then is not None else None
        failed = False
        return result, after
    finally:
        finish_loggers(loggers, failed)


def _precision_trainer_args(cfg: DictConfig) -> dict:
    """``trainer.precision=auto``: bf16-mixed where bf16 is fast here (``index/encode.has_fast_bf16``, the function
    encoding uses: CUDA with bf16, AMX, or AVX512-BF16 measured faster than fp32), 32-true elsewhere."""
    if str(cfg.trainer.get("precision")) != "auto":
        return {}
    from retrieval_lab.index.encode import has_fast_bf16

    gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    precision = "bf16-mixed" if has_fast_bf16(torch.device("cuda" if gpu else "cpu")) else "32-true"
    log.info("trainer.precision=auto resolved to %s", precision)
    return {"precision": precision}


def _grad_cache_trainer_args(cfg: DictConfig, model: RetrievalModule) -> dict:
    """With ``module.grad_cache.chunk_size`` the module steps its own optimizer (Lightning's manual optimization),
    so it also clips, at ``trainer.gradient_clip_val``; the Trainer must not. Under DDP every backward of the step
    (the loss's, then each chunk's) is synchronised by Lightning's ``manual_backward``: the accumulated gradients
    are equal on every rank after the first, so averaging again after each keeps them the global mean."""
    if not model.grad_cache_chunk:
        return {}
    if model.encoder.multi_vector:
        raise ValueError("module.grad_cache.chunk_size works with single-vector encoders, not model=colbert")
    model.gradient_clip_val = cfg.trainer.get("gradient_clip_val")
    return {"gradient_clip_val": None}


def _primary_metric(metrics: dict, split: str, name: str) -> float | None:
    """The value a sweeper optimizes: ``split``'s ``name``; for ``dev`` after training, the best dev evaluation
    (the one that chose the checkpoint). Tuning on test is allowed but warned about."""
    if split == "test":
        log.warning("optimized_metric.split=test: a sweeper will choose on test; use dev (the default)")
    train = metrics.get("train", {})
    if split == "dev" and train.get("dev_metric") == name:
        return train.get("best_dev_value")
    return metrics.get(split, {}).get(name)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the optimized metric so sweepers can use it."""
    metrics = train(cfg)
    return _primary_metric(metrics, cfg.optimized_metric.split, cfg.optimized_metric.name)
