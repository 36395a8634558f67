"""What a sentence-transformers checkpoint says about how to use it: pooling, normalisation, maximum length and
prompts (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json``). ``BiEncoder`` takes every setting left at None from here, so
``model.model_name=BAAI/bge-small-en-v1.5`` runs with CLS pooling and its query instruction, as its authors do.

A Dense layer without activation (the lab's own exports write one for ``projection_dim``) becomes the encoder's
projection, weights included. A checkpoint the lab cannot run as written is refused by name rather than run
differently: a pooling other than mean or CLS, a Dense layer with an activation, a Pooling that leaves the prompt
out (``include_prompt: false``), or any other module than Transformer, Pooling, Dense and Normalize.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_lab.models.backbone import resolve_model_path

log = logging.getLogger(__name__)

KNOWN = {"Transformer", "Pooling", "Dense", "Normalize"}
POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class UnsupportedCheckpointError(ValueError):
    """A sentence-transformers checkpoint that the lab would run differently from its recipe."""


@dataclass
class Recipe:
    """Settings a checkpoint prescribes; None where it says nothing."""

    source: str
    settings: dict = field(default_factory=dict)  # pooling, normalize, query/doc_max_length, query/doc_prefix
    dense: dict | None = None  # {"in_features", "out_features", "bias", "folder"}: a projection after pooling


def _file(model_name: str, name: str) -> Path | None:
    """``name`` inside a local folder, or from the Hugging Face cache/hub for a model id; None where absent."""
    folder = Path(resolve_model_path(model_name))
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return None
    try:
        return Path(hf_hub_download(model_name, name))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
        return None  # no such file, or offline and not cached: the model loads as a plain encoder (or fails there)


def _json(path: Path | None) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path is not None else {}


def read_recipe(model_name: str) -> Recipe | None:
    """The sentence-transformers recipe of ``model_name`` (None where it is no sentence-transformers checkpoint)."""
    modules_file = _file(model_name, "modules.json")
    if modules_file is None:
        return None
    modules = _json(modules_file)
    if any(m["type"].startswith("pylate.") for m in modules):
        raise UnsupportedCheckpointError(f"{model_name} is a multi-vector (PyLate ColBERT) checkpoint: load it with "
                                         "model=colbert")  # fmt: skip
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    if unknown := sorted(set(kinds) - KNOWN):
        raise UnsupportedCheckpointError(f"{model_name}: modules {unknown} in modules.json are not supported (only "
                                         f"{sorted(KNOWN)}): their weights would be left out")  # fmt: skip
    settings: dict = {"normalize": "Normalize" in kinds}
    if "Pooling" in kinds:
        config = _json(_file(model_name, f"{kinds['Pooling']['path']}/config.json"))
        if "pooling_mode" in config:  # sentence-transformers >= 6: one name (or a list of them)
            mode = config["pooling_mode"]
            modes = [
                m.removesuffix("_token").removesuffix("_tokens") for m in ([mode] if isinstance(mode, str) else mode)
            ]
        else:  # earlier versions: one boolean per mode
            modes = [mode for key, mode in POOLING_KEYS.items() if config.get(key)]
        if modes not in (["cls"], ["mean"]):
            raise UnsupportedCheckpointError(f"{model_name}: pools by {modes or 'nothing'}; the lab pools by mean "
                                             "or cls (model.pooling)")  # fmt: skip
        if config.get("include_prompt", True) is False:
            raise UnsupportedCheckpointError(f"{model_name}: its Pooling leaves the prompt tokens out "
                                             "(include_prompt: false), which the lab does not")  # fmt: skip
        settings["pooling"] = modes[0]
    length = _json(_file(model_name, "sentence_bert_config.json")).get("max_seq_length")
    if length is None:  # sentence-transformers >= 6 keeps it as the tokenizer's model_max_length
        length = _json(_file(model_name, "tokenizer_config.json")).get("model_max_length")
        length = length if isinstance(length, int) and length < 10**6 else None  # huge: "no limit" placeholders
    if length is not None:
        settings["query_max_length"] = settings["doc_max_length"] = int(length)
    st_config = _json(_file(model_name, "config_sentence_transformers.json"))
    prompts = st_config.get("prompts") or {}
    default = prompts.get(st_config.get("default_prompt_name") or "", "")
    settings["query_prefix"] = prompts.get("query", default)
    names = ("document", "passage", "doc", "corpus")
    settings["doc_prefix"] = next((prompts[k] for k in names if k in prompts), default)
    dense = None
    if "Dense" in kinds:
        path = kinds["Dense"]["path"]
        config = _json(_file(model_name, f"{path}/config.json"))
        activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
        if not activation.endswith("Identity"):
            raise UnsupportedCheckpointError(f"{model_name}: its Dense layer applies {activation}; the lab's "
                                             "projection is linear (model.projection_dim)")  # fmt: skip
        weights = _file(model_name, f"{path}/model.safetensors")
        if weights is None:
            raise UnsupportedCheckpointError(f"{model_name}: its Dense layer has no {path}/model.safetensors")
        dense = {k: config[k] for k in ("in_features", "out_features")} | {"bias": bool(config.get("bias", True)),
                                                                           "weights": str(weights)}  # fmt: skip
    return Recipe(str(modules_file.parent), settings, dense)


def apply_recipe(model_name: str, given: dict, defaults: dict, recipe: Recipe | None = None) -> dict:
    """``given`` settings (None: not set) completed from the checkpoint's recipe, then from ``defaults``; a given
    value that differs from the recipe's is logged, naming the key."""
    recipe = read_recipe(model_name) if recipe is None else recipe  # None from a plain folder: defaults only
    prescribed = recipe.settings if recipe is not None else {}
    out = {}
    for key, default in defaults.items():
        value = given.get(key)
        if value is None:
            value = prescribed.get(key, default)
        elif key in prescribed and prescribed[key] != value:
            log.warning("model.%s=%r overrides %s's own %r (its sentence-transformers recipe)", key, value,
                        model_name, prescribed[key])  # fmt: skip
        out[key] = value
    return out
