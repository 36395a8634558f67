"""Test-only pieces loaded by configs in subprocess runs (``+callbacks.kill._target_=tests.helpers...``)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl

from retrieval_lab.index import encode


class SigkillAtStep(pl.Callback):
    """Kills its own process with SIGKILL right after optimizer step ``step``: no cleanup, no final save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PretendNativeBf16(pl.Callback):
    """Makes ``precision=auto`` resolve as on a CPU with native bf16 (AMX or AVX512-BF16), in every process
    that instantiates it (each DDP rank does), so the bf16 path runs whatever the machine's CPU."""

    def __init__(self) -> None:
        encode.has_fast_bf16 = lambda device: True


def assert_scored_from_its_run(out, metrics: dict, split: str = "test") -> None:
    """The run folder's ``split`` figures are what its own ``run.<split>.trec`` scores against the qrels (every
    judged query answered): an evaluation that read a different run, or no run, fails this."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from retrieval_lab.eval.metrics import evaluate_run
    from retrieval_lab.eval.trec import read_trec_run

    out = Path(out)
    dataset = instantiate(OmegaConf.load(out / "config.yaml").data)
    run = read_trec_run(out / f"run.{split}.trec")
    assert set(run) == set(dataset.split_queries(split)), "the run does not answer every judged query"
    again = evaluate_run(dataset.qrels[split], run, list(metrics[split]))
    assert again == {k: round(v, 5) for k, v in metrics[split].items()}, (again, metrics[split])
