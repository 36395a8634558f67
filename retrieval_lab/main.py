"""The Hydra entry point (``python -m retrieval_lab``): compose ``conf/config.yaml``, then run the selected
``task``; returns the optimized metric to sweepers."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval_lab.utils.io import atomic_write_text, write_json
from retrieval_lab.utils.provenance import run_info
from retrieval_lab.utils.seed import seed_everything

log = logging.getLogger(__name__)


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
