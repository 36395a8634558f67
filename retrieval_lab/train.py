"""The Hydra entry point: compose ``conf/config.yaml``, then run the selected ``task``."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval_lab.utils.io import atomic_write_text
from retrieval_lab.utils.seed import seed_everything

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Run ``cfg.task`` on a composed config; returns the metrics it wrote to ``metrics.json``."""
    seed_everything(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    task = instantiate(cfg.task)
    return task(cfg)


def _primary_metric(metrics: dict, split: str, name: str) -> float | None:
    return metrics.get(split, {}).get(name)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the optimized metric so sweepers can use it."""
    metrics = train(cfg)
    return _primary_metric(metrics, cfg.optimized_metric.split, cfg.optimized_metric.name)
