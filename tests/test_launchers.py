"""Launchers and sweepers from Hydra plugins: the SLURM launcher sized from the trainer, an Optuna sweep that
maximises the dev metric, and real multiruns through submitit's local launcher and Optuna (slow)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.test_train import _cli, _cli_overrides


def _hydra_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="retrieval_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_slurm_launcher_is_sized_from_the_trainer():
    cfg = _hydra_cfg(["hydra/launcher=slurm_ddp", "trainer=ddp_gpu", "trainer.num_nodes=2", "trainer.devices=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)  # Lightning's SLURM rule
    assert launcher.max_num_timeout == 0 and launcher.additional_parameters.signal == "SIGUSR1@90"
    assert cfg.trainer.plugins[0].auto_requeue and cfg.trainer.strategy.process_group_backend == "nccl"


def test_optuna_search_maximises_the_dev_metric():
    cfg = _hydra_cfg(["hparams_search=optuna_dev"])
    sweeper = cfg.hydra.sweeper
    assert "Optuna" in sweeper._target_ and sweeper.direction == "maximize" and cfg.optimized_metric.split == "dev"
    assert set(sweeper.params) == {"module.optimizer.lr", "objective.temperature", "negatives.top_k"}
    assert OmegaConf.select(cfg, "hydra.mode").name == "MULTIRUN"


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_multirun(train_data, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in _cli_overrides(train_data, tmp_path / "unused") if not o.startswith("hydra.run")]
    done = _cli(["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", "seed=1,2",
                 "trainer.max_epochs=1", *overrides], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0", "1"):
        assert "test" in json.loads((sweep / job / "metrics.json").read_text())


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(train_data, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in _cli_overrides(train_data, tmp_path / "unused") if not o.startswith("hydra.run")]
    done = _cli(["-m", "hparams_search=optuna_dev", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                 "trainer.max_epochs=1", *overrides, "negatives=bm25", "negatives.show_progress=false"],
                capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
