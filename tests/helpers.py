"""Test-only pieces loaded by configs in subprocess runs (``+callbacks.kill._target_=tests.helpers...``)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SigkillAtStep(pl.Callback):
    """Kills its own process with SIGKILL right after optimizer step ``step``: no cleanup, no final save."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
