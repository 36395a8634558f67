"""Export a trained BiEncoder to ``hf``: a folder that is both a Hugging Face model (``AutoModel`` loads the
backbone) and a sentence-transformers one written by its own ``save`` (pooling, projection, normalisation and
prompts, model card included), so the lab, sentence-transformers and transformers all load it; separate towers
give ``hf/query`` and ``hf/doc``. A ColBERT is exported in PyLate's layout (which ``ColBERT(model_name=folder)``
and PyLate both load).

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


def _st_modules():
    try:  # sentence-transformers >= 6 moved its modules
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def save_sentence_transformers(encoder: BiEncoder, folder: Path, tower: torch.nn.Module | None = None) -> Path:
    """One tower (the query tower by default) as Transformer -> Pooling -> (Dense) -> (Normalize), with the
    query/document prefixes as prompts, written by sentence-transformers' own ``save`` (its model card included).
    The folder is a plain Hugging Face one too: ``AutoModel`` loads the backbone from it."""
    from sentence_transformers import SentenceTransformer

    st = _st_modules()
    with tempfile.TemporaryDirectory() as hf:
        (tower or encoder.query_tower).save_pretrained(hf)
        encoder.tokenizer.save_pretrained(hf)
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
    """Writes ``folder/hf`` (a ColBERT: ``folder/colbert``); returns what it wrote (for a shared tower
    ``sentence-transformers`` names the same folder as ``hf``).

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
    with atomic_dir(folder / "hf") as tmp:
        if encoder.query_tower is encoder.doc_tower:
            save_sentence_transformers(encoder, tmp)
        else:  # one complete model per tower: the projection and pooling go with each
            save_sentence_transformers(encoder, tmp / "query", encoder.query_tower)
            save_sentence_transformers(encoder, tmp / "doc", encoder.doc_tower)
    written = {"hf": str(folder / "hf")}
    if encoder.query_tower is encoder.doc_tower:
        written["sentence-transformers"] = written["hf"]  # the same folder serves both
    log.info("Exported the encoder to %s", written)
    return written
