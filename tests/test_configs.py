"""Every config option composes and instantiates; every experiment composes and runs on tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf

import retrieval_lab
from retrieval_lab.negatives.base import NegativeSampler
from retrieval_lab.train import instantiate_callbacks, train
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_MODEL_OVERRIDES

CONF = Path(retrieval_lab.__file__).parent / "conf"
GROUPS = (
    "task", "data", "retriever", "model", "paths", "objective", "negatives",
    "datamodule", "module", "callbacks", "index_refresh", "logger", "trainer", "experiment",
)  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"
    assert set(GROUPS) == {p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}


@pytest.mark.parametrize("option", options("data"))
def test_data_options_instantiate(compose_cfg, option):
    if option == "beir":
        cfg = compose_cfg(["data=beir", "data.name=tiny"])
    else:  # presets name a real dataset: read it from RETRIEVAL_LAB_DATA, skipping (saying why) where unset
        root = os.environ.get("RETRIEVAL_LAB_DATA")
        if not root:
            pytest.skip(f"data={option} reads a real dataset and RETRIEVAL_LAB_DATA is unset")
        cfg = compose_cfg([f"data={option}"], data_root=Path(root))
        assert cfg.data.name == option
    dataset = instantiate(cfg.data)
    assert dataset.corpus and dataset.queries and dataset.qrels


@pytest.mark.parametrize("option", options("model"))
def test_model_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"model={option}", *TINY_MODEL_OVERRIDES])
    encoder = instantiate(cfg.model)
    batch = encoder.tokenize_queries(["a query"])
    assert encoder.encode_queries(batch).shape[0] == 1


@pytest.mark.parametrize("option", options("retriever"))
def test_retriever_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"retriever={option}", *TINY_MODEL_OVERRIDES])
    retriever = instantiate(cfg.retriever)
    assert hasattr(retriever, "search")


@pytest.mark.parametrize("option", options("task"))
def test_task_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"task={option}"])
    assert callable(instantiate(cfg.task))


@pytest.mark.parametrize("option", options("objective"))
def test_objective_options_instantiate(compose_cfg, option):
    import torch

    objective = instantiate(compose_cfg([f"objective={option}"]).objective)
    q, d = torch.randn(2, 8), torch.randn(6, 8)
    assert objective(q, d, lambda a, b: a @ b.T).ndim == 0


@pytest.mark.parametrize("option", options("negatives"))
def test_negatives_options_instantiate(compose_cfg, option):
    sampler = instantiate(compose_cfg([f"negatives={option}"]).negatives)
    assert isinstance(sampler, NegativeSampler)


@pytest.mark.parametrize("option", options("datamodule"))
def test_datamodule_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"datamodule={option}"])
    datamodule = instantiate(cfg.datamodule)(dataset=instantiate(cfg.data, _partial_=True), negatives=None)
    assert isinstance(datamodule, pl.LightningDataModule) and datamodule.dataset is None  # nothing loaded yet


@pytest.mark.parametrize("option", options("module"))
def test_module_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"module={option}", *TINY_MODEL_OVERRIDES])
    module = instantiate(cfg.module)(encoder=instantiate(cfg.model), objective=instantiate(cfg.objective))
    assert isinstance(module, pl.LightningModule)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_options_instantiate(compose_cfg, option):
    callbacks = instantiate_callbacks(compose_cfg([f"callbacks={option}"]).callbacks)
    assert callbacks and all(isinstance(cb, pl.Callback) for cb in callbacks)


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_compose(compose_cfg, option):
    # Instantiating creates runs on disk; test_train.py runs both loggers end to end.
    cfg = compose_cfg([f"logger={option}"])
    assert all("_target_" in conf for conf in cfg.logger.values())


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"trainer={option}"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, pl.Trainer) and str(trainer.precision) == "32-true"


def test_default_run_is_training(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.task._target_.endswith("tasks.train.run") and cfg.retriever._target_.endswith("DenseRetriever")


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_run_on_tiny_data(compose_cfg, tmp_path, train_data, name):
    cfg = compose_cfg([f"experiment={name}"])
    training = cfg.task._target_.endswith("tasks.train.run")
    overrides = [f"experiment={name}", "data=beir", "data.name=tiny"]
    overrides += [*FAST_TRAIN_OVERRIDES, "trainer.max_epochs=1"] if training else TINY_MODEL_OVERRIDES
    cfg = compose_cfg(overrides, data_root=train_data if training else None)
    metrics = train(cfg)
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
    assert (tmp_path / "out" / "metrics.json").exists()


def test_negatives_sweep_is_one_multirun():
    sweep = OmegaConf.load(CONF / "experiment" / "dpr_scifact_negatives.yaml")
    assert sweep.hydra.mode == "MULTIRUN"
    assert sweep.hydra.sweeper.params.negatives.split(",") == ["in_batch", "random", "bm25"]
