"""Sentence-transformers checkpoints load on-recipe: their pooling, normalisation, maximum length and prompts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval_lab.models.backbone import load_backbone, load_tokenizer
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.st_recipe import UnsupportedCheckpointError, read_recipe
from tests.conftest import TINY_BERT

st = pytest.importorskip("sentence_transformers")
try:  # sentence-transformers >= 6 moved the modules
    from sentence_transformers.sentence_transformer import modules as st_modules
except ImportError:
    from sentence_transformers import models as st_modules
TEXTS = ["Aspirin lowers the risk of heart attacks in adults.", "Vitamin C does not prevent colds."]


def tiny_st_folder(folder: Path, pooling: str = "cls", normalize: bool = False, max_length: int = 12,
                   prompts: dict | None = None, **pooling_args) -> Path:  # fmt: skip
    """A sentence-transformers folder written by sentence-transformers itself around a tiny random BERT."""
    torch.manual_seed(0)
    hf = folder.parent / f"{folder.name}-hf"
    load_backbone("all-MiniLM-L6-v2", TINY_BERT).save_pretrained(hf)
    load_tokenizer("all-MiniLM-L6-v2").save_pretrained(hf)
    transformer = st_modules.Transformer(str(hf), max_seq_length=max_length)
    modules = [transformer, st_modules.Pooling(transformer.get_word_embedding_dimension(), pooling, **pooling_args)]
    if normalize:
        modules.append(st_modules.Normalize())
    model = st.SentenceTransformer(modules=modules, prompts=prompts or {}, device="cpu")
    model.save(str(folder))
    return folder


def _lab(encoder: BiEncoder, texts: list[str], side: str) -> np.ndarray:
    tokenize = encoder.tokenize_queries if side == "query" else encoder.tokenize_docs
    encode = encoder.encode_queries if side == "query" else encoder.encode_docs
    with torch.no_grad():
        return encode(tokenize(texts)).numpy()


def test_cls_pooling_and_a_query_prompt_reproduce_sentence_transformers_encode(tmp_path):
    folder = tiny_st_folder(tmp_path / "st", prompts={"query": "Represent this question for retrieval: "})
    lab = BiEncoder(str(folder)).eval()
    assert (lab.pooling, lab.normalize, lab.query_max_length) == ("cls", False, 12)
    assert lab.query_prefix == "Represent this question for retrieval: " and lab.doc_prefix == ""
    reference = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(_lab(lab, TEXTS, "query"), reference.encode(TEXTS, prompt_name="query"), atol=1e-6)
    np.testing.assert_allclose(_lab(lab, TEXTS, "doc"), reference.encode(TEXTS), atol=1e-6)
    # the old behaviour (mean pooling, no prompt) is measurably different: the recipe matters
    plain = BiEncoder(str(folder), pooling="mean", query_prefix="").eval()
    assert not np.allclose(_lab(plain, TEXTS, "query"), reference.encode(TEXTS, prompt_name="query"), atol=1e-3)


def test_mean_pooling_normalize_and_document_prompt(tmp_path):
    folder = tiny_st_folder(tmp_path / "st", pooling="mean", normalize=True, max_length=8,
                            prompts={"query": "q: ", "document": "d: "})  # fmt: skip
    lab = BiEncoder(str(folder)).eval()
    reference = st.SentenceTransformer(str(folder), device="cpu")
    assert (lab.pooling, lab.normalize, lab.doc_max_length, lab.doc_prefix) == ("mean", True, 8, "d: ")
    np.testing.assert_allclose(_lab(lab, TEXTS, "doc"), reference.encode(TEXTS, prompt_name="document"), atol=1e-6)


def test_given_settings_win_and_are_logged(tmp_path, caplog):
    folder = tiny_st_folder(tmp_path / "st")
    with caplog.at_level(logging.WARNING):
        lab = BiEncoder(str(folder), pooling="mean", query_max_length=6)
    assert (lab.pooling, lab.query_max_length, lab.doc_max_length) == ("mean", 6, 12)
    assert "model.pooling='mean' overrides" in caplog.text and "'cls'" in caplog.text


def test_checkpoints_the_lab_would_run_differently_are_refused_by_name(tmp_path):
    maxed = tiny_st_folder(tmp_path / "max", pooling="max")
    with pytest.raises(UnsupportedCheckpointError, match=r"pools by \['max'\]"):
        BiEncoder(str(maxed))
    no_prompt = tiny_st_folder(tmp_path / "np", pooling="mean", include_prompt=False)
    with pytest.raises(UnsupportedCheckpointError, match="include_prompt"):
        read_recipe(str(no_prompt))
    dense = tiny_st_folder(tmp_path / "dense", pooling="mean")
    modules = json.loads((dense / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedCheckpointError, match=r"Dense layer applies .*Tanh"):
        BiEncoder(str(dense))  # no config: sentence-transformers' default activation, which the lab cannot apply


def test_a_plain_hugging_face_folder_has_no_recipe_and_gets_the_defaults(tmp_path):
    hf = tmp_path / "hf"
    load_backbone("all-MiniLM-L6-v2", TINY_BERT).save_pretrained(hf)
    load_tokenizer("all-MiniLM-L6-v2").save_pretrained(hf)
    assert read_recipe(str(hf)) is None
    lab = BiEncoder(str(hf))
    assert (lab.pooling, lab.normalize, lab.query_max_length, lab.doc_max_length) == ("mean", True, 64, 256)
    expected = {"normalize": True, "pooling": "mean", "query_max_length": 256, "doc_max_length": 256,
                "query_prefix": "", "doc_prefix": ""}  # fmt: skip
    assert read_recipe("all-MiniLM-L6-v2").settings == expected


def test_a_lab_export_with_a_projection_reloads_it_and_sentence_transformers_agrees(tmp_path):
    from retrieval_lab.models.export import export_encoder

    torch.manual_seed(0)
    lab = BiEncoder(config_overrides=TINY_BERT, projection_dim=8, query_prefix="q: ").eval()
    folder = export_encoder(lab, tmp_path / "export")["sentence-transformers"]
    card = (Path(folder) / "README.md").read_text()  # written by sentence-transformers' own save: its model card
    assert "library_name: sentence-transformers" in card and "8-dimensional" in card
    reloaded = BiEncoder(str(folder)).eval()  # the Dense layer becomes the projection, weights and all
    assert reloaded.projection.out_features == 8 and reloaded.query_prefix == "q: "
    np.testing.assert_allclose(_lab(reloaded, TEXTS, "query"), _lab(lab, TEXTS, "query"), atol=1e-6)
    reference = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(_lab(reloaded, TEXTS, "query"), reference.encode(TEXTS, prompt_name="query"), atol=1e-5)
    with pytest.raises(ValueError, match="projection_dim=4"):
        BiEncoder(str(folder), projection_dim=4)
