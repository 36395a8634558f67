"""Loggers from the ``logger`` config: each run logs its resolved config and ``hydra.runtime.choices``."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger


def hydra_choices() -> dict[str, str]:
    """``hydra.runtime.choices`` (which option of every group was picked); empty outside ``@hydra.main``."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()}


def sweep_group() -> str | None:
    """Under ``-m``, the sweep folder's name, so the jobs of one sweep share a wandb group."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:])  # <date>/<time> by default


def instantiate_loggers(logger_cfg: DictConfig | None, job_type: str | None = None) -> list[Logger]:
    """The configured loggers; ``job_type`` (wandb's) marks runs that are not training (``evaluate``, ``test``)."""
    loggers: list[Logger] = []
    for name, conf in (logger_cfg or {}).items():
        if conf is None:
            continue
        extra = {"group": sweep_group()} if "group" in conf and conf.group is None else {}
        if job_type is not None and "job_type" in conf:
            extra["job_type"] = job_type
        if "tags" in conf and conf.tags is None:  # wandb: tag the run with the option picked in every group
            choices = hydra_choices().items()
            extra["tags"] = [f"{k}={v}"[:64] for k, v in choices if v != "None" and not k.startswith("hydra/")]
        logger = instantiate(conf, **extra)
        if not isinstance(logger, Logger):
            raise TypeError(f"logger.{name} instantiated a {type(logger).__name__}, not a Lightning Logger")
        loggers.append(logger)
    return loggers


def log_run_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """The resolved config and the group choices, so a run can be reproduced from its logger alone."""
    params = {"config": OmegaConf.to_container(cfg, resolve=True), "hydra_choices": hydra_choices()}
    for logger in loggers:
        logger.log_hyperparams(params)


def log_final_figures(loggers: list[Logger], figures: dict, step: int, summary_extra: dict | None = None) -> None:
    """Log a run's final ``figures`` at ``step``; for wandb also into the run summary (with ``summary_extra``), which
    holds them whatever is logged later."""
    for logger in loggers:
        logger.log_metrics(figures, step)
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(figures | (summary_extra or {}))
        logger.save()  # Lightning finalizes its loggers at the end of fit; this writes what came after


def finish_loggers(loggers: list[Logger], failed: bool = False) -> None:
    """Close wandb runs (always, also after an error), so offline runs are complete on disk."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish(exit_code=1 if failed else 0)


def log_evaluation(cfg: DictConfig, results: dict, splits, job_type: str = "evaluate",
                   config: DictConfig | None = None) -> None:  # fmt: skip
    """An evaluation task's figures (``results[split][metric]`` for ``splits``, and its ``retrieval`` costs) to
    ``cfg``'s loggers, as one run of its own: the resolved config (``config``, default ``cfg``: for task=test the
    trained run's) and choices, the figures at step 0, and for wandb the run summary, so evaluations sit beside
    training runs in the dashboard."""
    flat = {f"{split}/{k}": v for split in [*splits, "retrieval"] if isinstance(results.get(split), dict)
            for k, v in results[split].items() if isinstance(v, int | float)}  # fmt: skip
    loggers = instantiate_loggers(cfg.get("logger"), job_type=job_type)
    failed = True
    try:
        log_run_config(loggers, cfg if config is None else config)
        log_final_figures(loggers, flat, step=0)
        failed = False
    finally:
        finish_loggers(loggers, failed)
