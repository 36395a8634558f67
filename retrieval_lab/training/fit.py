"""``fit(cfg)``: the training pipeline ``task=train`` (and ``task=train_sts``) runs. It instantiates the pieces in
one fixed order, datamodule, model, callbacks, loggers, trainer, then fits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from retrieval_lab.loggers.setup import finish_loggers, instantiate_loggers, log_run_config
from retrieval_lab.pretrain.stage import init_encoder
from retrieval_lab.training.datamodule import RetrievalDataModule
from retrieval_lab.training.module import RetrievalModule
from retrieval_lab.utils.instantiate import instantiate_callbacks, make

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class FitResult:
    datamodule: RetrievalDataModule
    model: RetrievalModule
    callbacks: list[pl.Callback]
    loggers: list
    trainer: pl.Trainer


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
