"""The pre-training stage, and how a run's encoder gets its starting weights.

``init_encoder(cfg, encoder)`` (called by ``training.fit.fit`` before training) loads, in this order of precedence:

- ``init_from=<path>``: a Lightning checkpoint (``.ckpt``, e.g. a fine-tuning run's ``best-step*.ckpt``), a
  pre-training ``encoder.pt``, or a folder holding one of those (a ``task=pretrain`` output folder);
- ``pretrain_task=<task>``: the weights of a pre-training stage with that task. The stage's weights are cached
  under ``pretrain_task.cache_dir`` by a hash of everything that determines them (model, task, corpus, stage
  settings, objective, trainer precision, seed), so the jobs of a sweep that share a pre-training (the 1% and 5%
  fine-tuning of the same task) pre-train once. Setting both is an error.

The cache key also holds ``code_fingerprint()``, a hash of the source of the tasks, corpus readers, objectives,
models and training module, so changed code never reuses a stage the old code made.

``run_pretraining(cfg, out_dir)`` trains a fresh ``cfg.model`` encoder on ``cfg.pretrain_task`` (pairs with
``cfg.objective``, the in-batch sampled softmax; MLM batches with the MLM head) on one device for
``pretrain_task.max_steps`` steps and writes ``encoder.pt``, ``pretrain.json`` and a CSV log into ``out_dir``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger

from retrieval_lab.models.base import Encoder
from retrieval_lab.pretrain.data import PretrainDataModule
from retrieval_lab.pretrain.module import PretrainModule
from retrieval_lab.pretrain.tasks import MaskedLanguageModel, RetroMAE, subtasks
from retrieval_lab.utils.instantiate import make
from retrieval_lab.utils.io import atomic_dir, atomic_file, write_json
from retrieval_lab.utils.seed import seed_everything

log = logging.getLogger(__name__)
WEIGHTS = "encoder.pt"
HEADS = "heads.pt"  # the pre-training heads (MLM head, RetroMAE decoder): to continue a stage, never to fine-tune
_NOT_IN_KEY = ("cache_dir", "num_workers")  # settings that do not change the weights


def _construct(conf, **kwargs):

    return make(conf, **kwargs)


def pretrain_key(cfg: DictConfig) -> str:
    """A short hash of the resolved settings that determine the pre-trained weights."""
    stage = {k: v for k, v in OmegaConf.to_container(cfg.pretrain_task, resolve=True).items() if k not in _NOT_IN_KEY}
    parts = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "pretrain_task": stage,
        "objective": OmegaConf.to_container(stage_objective(cfg), resolve=True),
        "precision": str(cfg.trainer.get("precision")),
        "seed": cfg.seed,
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# The code that makes the pre-training examples and trains on them: a change here is a different stage.
_STAGE_CODE = ("pretrain", "data/wiki.py", "data/squad.py", "data/sentences.py", "objectives", "models",
               "training/module.py")  # fmt: skip


@functools.cache
def code_fingerprint() -> str:
    """A hash of the source files behind a stage's weights (``_STAGE_CODE`` under the package), so an edited task,
    corpus reader, objective or model never reuses a cached stage made by the old code."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for entry in _STAGE_CODE:
        for path in sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() else [root / entry]:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def stage_objective(cfg: DictConfig) -> DictConfig:
    """The pre-training stage's objective: ``pretrain_task.objective`` where set, else the run's ``objective``."""
    return cfg.pretrain_task.get("objective") or cfg.objective


def _check_single_device(cfg: DictConfig) -> None:
    devices = cfg.trainer.get("devices", 1)
    if devices not in (1, "1") or cfg.trainer.get("strategy") not in (None, "auto"):
        raise ValueError(
            "the pre-training stage runs on one device: run it alone with `task=pretrain trainer=cpu`, then "
            "fine-tune with init_from=<its output folder>"
        )


def run_pretraining(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Pre-train a fresh encoder (see the module docstring); returns the summary it writes to pretrain.json."""
    _check_single_device(cfg)
    with _own_rng(cfg.seed):
        return _pretrain(cfg, Path(out_dir))


def _pretrain(cfg: DictConfig, out_dir: Path) -> dict:
    stage = cfg.pretrain_task
    task = _construct(stage.generator)
    encoder = _construct(cfg.model)
    optimizer = functools.partial(torch.optim.AdamW, lr=stage.lr, weight_decay=stage.weight_decay)
    module = _module(task, encoder, _construct(stage_objective(cfg)), optimizer, stage.warmup_ratio, cfg.seed)
    if stage.get("init_from"):
        _continue_from(module, Path(stage.init_from))
    datamodule = PretrainDataModule(
        corpus=instantiate(stage.corpus, _partial_=True), task=task, batch_size=stage.batch_size,
        num_batches=stage.max_steps, seed=cfg.seed, num_workers=stage.num_workers,
        query_max_length=stage.query_max_length, doc_max_length=stage.doc_max_length,
    )  # fmt: skip
    datamodule.bind_encoder(encoder)
    trainer = instantiate(
        cfg.trainer, default_root_dir=str(out_dir), max_steps=stage.max_steps, max_epochs=-1, callbacks=[],
        logger=CSVLogger(str(out_dir), name="csv"), enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    start = time.perf_counter()
    datamodule.setup("fit")  # read and index the corpus here, so the step time below is training alone
    loaded = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - loaded
    with atomic_file(out_dir / WEIGHTS) as tmp:
        torch.save(encoder.state_dict(), tmp)
    if heads := module.heads_state_dict():
        with atomic_file(out_dir / HEADS) as tmp:
            torch.save(heads, tmp)
    summary = {
        "task": task.name,
        "corpus": datamodule.corpus.name,
        "articles": len(datamodule.corpus.articles),
        "steps": trainer.global_step,
        "batch_size": stage.batch_size,
        "corpus_seconds": round(loaded - start, 1),
        "fit_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, trainer.global_step), 3),
        "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "key": pretrain_key(cfg),
        "weights": WEIGHTS,  # next to this file
    }
    write_json(out_dir / "pretrain.json", summary)
    log.info("pre-trained %s for %d steps in %.0fs: %s", task.name, trainer.global_step, seconds, out_dir)
    return summary


def _module(task, encoder: Encoder, objective, optimizer, warmup_ratio: float, seed: int) -> PretrainModule:
    """The pre-training module with the heads ``task`` (or a mix's tasks) needs."""
    tasks = subtasks(task)
    retromae = next((t for t in tasks if isinstance(t, RetroMAE)), None)
    settings = None if retromae is None else {"enhanced_decoding": retromae.enhanced_decoding,
                                              "sentence_pooling": retromae.sentence_pooling}  # fmt: skip
    masked_lm = any(isinstance(t, MaskedLanguageModel) and not isinstance(t, RetroMAE) for t in tasks)
    return PretrainModule(encoder, objective, optimizer, warmup_ratio, seed, masked_lm=masked_lm, retromae=settings)


def _continue_from(module: PretrainModule, folder: Path) -> None:
    """Start a stage from an earlier stage's output (``pretrain_task.init_from``): its encoder and its heads."""
    heads = load_encoder_weights(module.encoder, folder).parent / HEADS  # saved beside the encoder's weights
    if module.heads_state_dict():
        if not heads.is_file():
            raise FileNotFoundError(f"pretrain_task.init_from={folder}: no {HEADS} there to continue the heads from")
        module.load_heads_state_dict(torch.load(heads, map_location="cpu", weights_only=True), str(heads))
    log.info("continuing pre-training from %s", folder)


@contextlib.contextmanager
def _own_rng(seed: int):
    """Seed the stage from ``seed`` alone and give the caller its random state back afterwards, so the weights
    do not depend on what ran before and the fine-tuning run is the same whether the cache was hit or not."""
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def cached_pretraining(cfg: DictConfig) -> Path:
    """The stage's ``encoder.pt`` from the cache, pre-training (into a temporary folder, then renamed) if absent."""
    folder = Path(cfg.pretrain_task.cache_dir) / f"{cfg.pretrain_task.name}-{pretrain_key(cfg)}"
    if (folder / WEIGHTS).exists():
        log.info("pre-trained weights found in the cache: %s", folder)
        return folder / WEIGHTS
    with atomic_dir(folder) as tmp:
        run_pretraining(cfg, tmp)
    return folder / WEIGHTS


def _weights_file(path: Path) -> Path:
    """The weights ``init_from`` names: a file; a pre-training folder's ``encoder.pt``; a finished training run's
    dev-chosen checkpoint (``metrics.json``'s ``train.best_checkpoint``, which is ``start.ckpt`` where nothing beat
    the starting weights), never its last one; an unfinished run's ``last.ckpt``, with a warning."""
    if path.is_file():
        return path
    for candidate in (path / WEIGHTS, path / "pretrain" / WEIGHTS):
        if candidate.is_file():
            return candidate
    metrics = path / "metrics.json"
    chosen = json.loads(metrics.read_text()).get("train", {}).get("best_checkpoint") if metrics.is_file() else None
    if chosen:
        for candidate in (Path(chosen), path / "checkpoints" / Path(chosen).name):  # the run folder may have moved
            if candidate.is_file():
                log.info("init_from=%s: the run's dev-chosen checkpoint %s", path, candidate.name)
                return candidate
        raise FileNotFoundError(f"init_from={path}: metrics.json names {chosen}, which is not there")
    if (path / "checkpoints" / "last.ckpt").is_file():
        log.warning(
            "init_from=%s: no dev-chosen checkpoint in a metrics.json (an unfinished run?): its last.ckpt", path
        )
        return path / "checkpoints" / "last.ckpt"
    raise FileNotFoundError(f"init_from={path}: no {WEIGHTS}, finished training run or Lightning checkpoint there")


def load_encoder_weights(encoder: Encoder, path: str | Path) -> Path:
    """Load ``path`` (see ``_weights_file``) into ``encoder``; the weights must fit it exactly."""
    file = _weights_file(Path(path))
    state = torch.load(file, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a Lightning checkpoint of the training module: keep the encoder's part
        state = {k.removeprefix("encoder."): v for k, v in state["state_dict"].items() if k.startswith("encoder.")}
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"init_from={file}: the weights do not fit model ({err})") from None
    if missing or unexpected:
        raise ValueError(f"init_from={file}: the weights do not fit model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}): pre-train and fine-tune the same model config")  # fmt: skip
    log.info("initialised the encoder from %s", file)
    return file


def init_encoder(cfg: DictConfig, encoder: Encoder) -> Path | None:
    """Starting weights for ``encoder`` from ``init_from`` or a (cached) pre-training stage; None: as built."""
    init_from, stage = cfg.get("init_from"), cfg.get("pretrain_task")
    if init_from and stage is not None:
        raise ValueError("set init_from or pretrain_task, not both: init_from already names pre-trained weights")
    if init_from:
        return load_encoder_weights(encoder, init_from)
    if stage is not None:
        return load_encoder_weights(encoder, cached_pretraining(cfg))
    return None
