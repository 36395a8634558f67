"""Export a trained BiEncoder to a plain Hugging Face folder and a sentence-transformers folder, or a ColBERT
to a Hugging Face folder plus its projection and settings (which ``ColBERT(model_name=folder)`` reloads).

The sentence-transformers layout is written directly (``modules.json``, a Pooling, optional Dense and
Normalize module), so exporting needs no sentence-transformers install; ``tests/test_training_pieces.py``
loads the result with sentence-transformers and checks it gives the lab's vectors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import save_file

from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.colbert import CONFIG_FILE, PROJECTION_FILE, ColBERT
from retrieval_lab.utils.io import atomic_dir

log = logging.getLogger(__name__)

_ST_TYPES = {
    "pooling": "sentence_transformers.models.Pooling",
    "dense": "sentence_transformers.models.Dense",
    "normalize": "sentence_transformers.models.Normalize",
}


def _write_json(path: Path, obj: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_hf(encoder: BiEncoder, folder: Path) -> list[Path]:
    """The backbone(s) and tokenizer via ``save_pretrained``; two sub-folders where the towers differ."""
    towers = {"": encoder.query_tower} if encoder.query_tower is encoder.doc_tower else {
        "query": encoder.query_tower, "doc": encoder.doc_tower}  # fmt: skip
    written = []
    for sub, tower in towers.items():
        target = folder / sub if sub else folder
        tower.save_pretrained(target)
        encoder.tokenizer.save_pretrained(target)
        written.append(target)
    return written


def save_sentence_transformers(encoder: BiEncoder, folder: Path) -> Path:
    """Transformer -> Pooling -> (Dense) -> (Normalize), with the query/document prefixes as prompts."""
    if encoder.query_tower is not encoder.doc_tower:
        raise ValueError("a sentence-transformers folder holds one tower; this encoder has separate towers")
    save_hf(encoder, folder)
    hidden = encoder.query_tower.config.hidden_size
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": encoder.doc_max_length,
                                                       "do_lower_case": False})  # fmt: skip
    _write_json(folder / "config_sentence_transformers.json", {
        "prompts": {"query": encoder.query_prefix, "document": encoder.doc_prefix},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if encoder.similarity == "cosine" else "dot",
    })  # fmt: skip
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]

    def add(kind: str, config: dict | None = None) -> Path:
        idx = len(modules)
        path = f"{idx}_{kind.capitalize()}"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": _ST_TYPES[kind]})
        if config is not None:
            _write_json(folder / path / "config.json", config)
        (folder / path).mkdir(parents=True, exist_ok=True)
        return folder / path

    add("pooling", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": encoder.pooling == "cls",
        "pooling_mode_mean_tokens": encoder.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })  # fmt: skip
    if encoder.projection is not None:
        proj = encoder.projection
        path = add("dense", {"in_features": proj.in_features, "out_features": proj.out_features, "bias": True,
                             "activation_function": "torch.nn.modules.linear.Identity"})  # fmt: skip
        weights = {"linear.weight": proj.weight.detach().cpu().contiguous(), "linear.bias": proj.bias.detach().cpu()}
        save_file(weights, str(path / "model.safetensors"))
    if encoder.normalize:
        add("normalize")
    _write_json(folder / "modules.json", modules)
    return folder


def save_colbert(encoder: ColBERT, folder: Path) -> Path:
    """The backbone and tokenizer (markers included) via ``save_pretrained``, the projection, the settings."""
    encoder.backbone.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    save_file({"weight": encoder.projection.weight.detach().cpu().contiguous()}, str(folder / PROJECTION_FILE))
    _write_json(folder / CONFIG_FILE, dict(encoder.settings))
    return folder


def export_encoder(encoder: BiEncoder | ColBERT, folder: str | Path) -> dict[str, str]:
    """Writes ``folder/hf`` and, for a shared tower, ``folder/sentence-transformers`` (a ColBERT: ``folder/colbert``);
    returns what it wrote.

    Each folder is filled under a temporary name and renamed into place, so no export is ever half-written.
    """
    folder = Path(folder)
    if not isinstance(encoder, BiEncoder | ColBERT):  # e.g. model=cde: its weights are in the run's checkpoints
        log.warning("no export format for %s: use the run's checkpoints (init_from=<run folder>)",
                    type(encoder).__name__)  # fmt: skip
        return {}
    if isinstance(encoder, ColBERT):
        with atomic_dir(folder / "colbert") as tmp:
            save_colbert(encoder, tmp)
        log.info("Exported the ColBERT encoder to %s", folder / "colbert")
        return {"colbert": str(folder / "colbert")}
    written = {"hf": str(folder / "hf")}
    with atomic_dir(folder / "hf") as tmp:
        save_hf(encoder, tmp)
    if encoder.query_tower is encoder.doc_tower:
        with atomic_dir(folder / "sentence-transformers") as tmp:
            save_sentence_transformers(encoder, tmp)
        written["sentence-transformers"] = str(folder / "sentence-transformers")
    else:
        log.warning("separate query and document towers: exported Hugging Face folders only")
    log.info("Exported the encoder to %s", written)
    return written
