"""Instantiating config nodes the lab's way, below every module that builds components from a config."""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig


def make(conf: DictConfig, **kwargs):
    """``instantiate``, surfacing a component's own ``ValueError`` (which names the config key) unwrapped."""
    try:
        return instantiate(conf, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[pl.Callback]:
    return [make(conf) for conf in (callbacks_cfg or {}).values() if conf is not None]
