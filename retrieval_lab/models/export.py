"""Export a trained BiEncoder to a plain Hugging Face folder and a sentence-transformers folder (written by
sentence-transformers' own ``save``, model card included), or a ColBERT in PyLate's layout (which
``ColBERT(model_name=folder)`` and PyLate both load).

``tests/test_training_pieces.py`` and ``tests/test_st_recipe.py`` load the exports with sentence-transformers
and check they give the lab's vectors; ``tests/test_colbert_formats.py`` does the same for PyLate.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.models.colbert_formats import save_pylate
from retrieval_lab.utils.io import atomic_dir

log = logging.getLogger(__name__)


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


def _st_modules():
    try:  # sentence-transformers >= 6 moved its modules
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def save_sentence_transformers(encoder: BiEncoder, folder: Path) -> Path:
    """Transformer -> Pooling -> (Dense) -> (Normalize), with the query/document prefixes as prompts, written by
    sentence-transformers' own ``save`` (its model card included)."""
    from sentence_transformers import SentenceTransformer

    if encoder.query_tower is not encoder.doc_tower:
        raise ValueError("a sentence-transformers folder holds one tower; this encoder has separate towers")
    st = _st_modules()
    with tempfile.TemporaryDirectory() as hf:
        save_hf(encoder, Path(hf))
        transformer = st.Transformer(hf, max_seq_length=encoder.doc_max_length)
    modules = [transformer, st.Pooling(encoder.query_tower.config.hidden_size, encoder.pooling)]
    if encoder.projection is not None:
        proj = encoder.projection
        dense = st.Dense(proj.in_features, proj.out_features, bias=True, activation_function=torch.nn.Identity())
        dense.linear.load_state_dict(proj.state_dict())
        modules.append(dense)
    if encoder.normalize:
        modules.append(st.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu",
                                prompts={"query": encoder.query_prefix, "document": encoder.doc_prefix},
                                similarity_fn_name="cosine" if encoder.similarity == "cosine" else "dot")  # fmt: skip
    model.save(str(folder))
    return folder


def save_colbert(encoder: ColBERT, folder: Path) -> Path:
    """PyLate's layout: the backbone and tokenizer (markers included), ``1_Dense`` with the projection, and the
    ColBERT settings in ``config_sentence_transformers.json``; the lab and PyLate both load it."""
    save_pylate(encoder.backbone, encoder.tokenizer, encoder.projection.weight, encoder.settings,
                encoder.skiplist_tokens(), folder)  # fmt: skip
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
