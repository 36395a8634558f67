"""Where a ColBERT checkpoint keeps its projection and settings, in the three layouts researchers publish:

- **PyLate** (sentence-transformers multi-vector): ``modules.json`` = a Transformer then ``pylate.models.Dense``
  (``1_Dense/config.json`` and ``1_Dense/model.safetensors`` with ``linear.weight``);
  ``config_sentence_transformers.json`` holds the markers (``query_prefix``/``document_prefix``), lengths,
  ``attend_to_expansion_tokens``, ``do_query_expansion`` and ``skiplist_words``. The lab exports this layout.
- **Stanford colbert-ir**: a Hugging Face folder whose ``config.json`` names ``HF_ColBERT``, the projection as
  ``linear.weight`` in the model's own weights, the settings in ``artifact.metadata``.
- **The lab's older exports**: ``colbert_config.json`` and ``colbert_projection.safetensors``.

``read_colbert_checkpoint`` returns the lab's settings and the projection; what the lab would run differently
(a Dense with bias or activation, no query expansion, no markers, an L2 similarity) is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from retrieval_lab.models.st_recipe import UnsupportedCheckpointError, _file, _json
from retrieval_lab.utils.io import write_json

LAB_CONFIG = "colbert_config.json"
LAB_PROJECTION = "colbert_projection.safetensors"
PYLATE_DENSE = "pylate.models.Dense.Dense"
PYLATE_DENSE_SUFFIX = "Dense.Dense"  # PyLate's module type, whatever package path a version writes


@dataclass
class ColBERTCheckpoint:
    """What a folder says: ``settings`` in the lab's names (only those it sets), the projection (None: none)."""

    layout: str  # "pylate", "stanford" or "lab"
    settings: dict = field(default_factory=dict)
    projection: torch.Tensor | None = None  # (dim, hidden)
    skiplist_words: list[str] | None = None  # tokens whose document vectors are dropped; None: the lab's own


def _refuse(model_name: str, what: str) -> None:
    raise UnsupportedCheckpointError(f"{model_name}: {what}; the lab would run it differently, so it is refused")


def _pylate(model_name: str, modules: list[dict]) -> ColBERTCheckpoint:
    types = [m.get("type", "") for m in modules]
    if len(modules) != 2 or not types[0].endswith("Transformer") or not types[1].endswith(PYLATE_DENSE_SUFFIX):
        _refuse(model_name, f"modules.json holds {types}; a PyLate ColBERT is a Transformer then a Dense")
    dense_dir = modules[1].get("path") or "1_Dense"
    dense = _json(_file(model_name, f"{dense_dir}/config.json"))
    if dense.get("bias") or dense.get("use_residual"):
        _refuse(model_name, f"its Dense layer has bias={dense.get('bias')}, use_residual={dense.get('use_residual')}")
    activation = dense.get("activation_function", "torch.nn.modules.linear.Identity")
    if not activation.endswith("Identity"):
        _refuse(model_name, f"its Dense layer applies {activation}")
    weights_file = _file(model_name, f"{dense_dir}/model.safetensors")
    if weights_file is None:
        _refuse(model_name, f"{dense_dir}/model.safetensors is missing (a pytorch_model.bin Dense is not read)")
    weight = load_file(str(weights_file))["linear.weight"]
    st = _json(_file(model_name, "config_sentence_transformers.json"))
    if st.get("similarity_fn_name", "MaxSim") != "MaxSim":
        _refuse(model_name, f"similarity_fn_name={st['similarity_fn_name']!r} (the lab scores with MaxSim)")
    if st.get("do_query_expansion") is False:
        _refuse(model_name, "do_query_expansion=false (the lab always pads queries with [MASK] and scores them)")
    if st.get("query_prefix") == "" or st.get("document_prefix") == "":
        _refuse(model_name, "an empty query_prefix or document_prefix (the lab always inserts a marker)")
    names = {"query_prefix": "query_marker", "document_prefix": "doc_marker", "query_length": "query_max_length",
             "document_length": "doc_max_length", "attend_to_expansion_tokens": "attend_to_mask_tokens"}  # fmt: skip
    settings = {lab: st[key] for key, lab in names.items() if st.get(key) is not None}
    settings.setdefault("query_marker", "[Q] ")  # PyLate's defaults where its config is silent
    settings.setdefault("doc_marker", "[D] ")
    settings["dim"] = int(weight.shape[0])
    words = st.get("skiplist_words")
    settings["skip_punctuation"] = bool(words) if words is not None else True
    return ColBERTCheckpoint("pylate", settings, weight, list(words) if words else None)


def _stanford(model_name: str) -> ColBERTCheckpoint:
    meta = _json(_file(model_name, "artifact.metadata"))
    if meta.get("similarity", "cosine") != "cosine":
        _refuse(model_name, f"similarity={meta['similarity']!r} (the lab scores cosine MaxSim)")
    names = {"query_token_id": "query_marker", "doc_token_id": "doc_marker", "query_maxlen": "query_max_length",
             "doc_maxlen": "doc_max_length", "attend_to_mask_tokens": "attend_to_mask_tokens",
             "mask_punctuation": "skip_punctuation"}  # fmt: skip
    settings = {lab: meta[key] for key, lab in names.items() if meta.get(key) is not None}
    settings.setdefault("query_marker", "[unused0]")
    settings.setdefault("doc_marker", "[unused1]")
    weight = None
    if (path := _file(model_name, "model.safetensors")) is not None:
        with safe_open(str(path), "pt") as weights:  # the projection alone; the backbone loads the rest itself
            weight = weights.get_tensor("linear.weight") if "linear.weight" in weights.keys() else None
    elif (path := _file(model_name, "pytorch_model.bin")) is not None:
        weight = torch.load(path, map_location="cpu").get("linear.weight")
    if weight is None:
        _refuse(model_name, "an HF_ColBERT checkpoint without linear.weight")
    settings["dim"] = int(weight.shape[0])
    return ColBERTCheckpoint("stanford", settings, weight)


def read_colbert_checkpoint(model_name: str) -> ColBERTCheckpoint | None:
    """The ColBERT settings and projection ``model_name`` carries, or None for a plain encoder."""
    modules_file = _file(model_name, "modules.json")
    if modules_file is not None:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        if any(m.get("type", "").endswith(PYLATE_DENSE_SUFFIX) for m in modules):
            return _pylate(model_name, modules)
    architectures = _json(_file(model_name, "config.json")).get("architectures") or []
    if "HF_ColBERT" in architectures:
        return _stanford(model_name)
    lab_config = _file(model_name, LAB_CONFIG)
    if lab_config is not None:
        projection = _file(model_name, LAB_PROJECTION)
        weight = load_file(str(projection))["weight"] if projection is not None else None
        return ColBERTCheckpoint("lab", _json(lab_config), weight)
    return None


def save_pylate(backbone, tokenizer, projection: torch.Tensor, settings: dict, skiplist_words: list[str],
                folder: Path) -> None:  # fmt: skip
    """Write ``folder`` in PyLate's layout (PyLate's ``models.ColBERT(folder)`` loads it with the same vectors)."""
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": PYLATE_DENSE},
    ])  # fmt: skip
    write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": int(settings["doc_max_length"]), "do_lower_case": False},
    )
    write_json(folder / "config_sentence_transformers.json", {
        "model_type": "ColBERT", "similarity_fn_name": "MaxSim", "prompts": {}, "default_prompt_name": None,
        "query_prefix": settings["query_marker"], "document_prefix": settings["doc_marker"],
        "query_length": int(settings["query_max_length"]), "document_length": int(settings["doc_max_length"]),
        "attend_to_expansion_tokens": bool(settings["attend_to_mask_tokens"]), "do_query_expansion": True,
        "skiplist_words": skiplist_words,
    })  # fmt: skip
    dim, hidden = projection.shape
    write_json(
        folder / "1_Dense/config.json",
        {
            "in_features": int(hidden),
            "out_features": int(dim),
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
        },
    )
    save_file({"linear.weight": projection.detach().cpu().contiguous()}, str(folder / "1_Dense/model.safetensors"))
