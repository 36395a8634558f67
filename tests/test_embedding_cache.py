"""Encode once, search many: a second index of the same corpus with the same weights loads the saved vectors
(no encoding) and ranks identically; other weights, another corpus text or another precision encode again."""

from __future__ import annotations

import json

import pytest
import torch

import retrieval_lab.retrievers.dense as dense
from retrieval_lab.data.beir import Document
from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.retrievers.dense import DenseRetriever
from tests.conftest import TINY_BERT, TINY_CORPUS, TINY_MODEL_OVERRIDES

CORPUS = {d: Document(t, x) for d, (t, x) in TINY_CORPUS.items()}


@pytest.fixture
def encodings(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = dense.encode_texts

    def counted(enc, texts, side, *args, **kwargs):
        if side == "docs":
            calls.append(len(texts))  # corpus encodings only (queries are encoded every search)
        return real(enc, texts, side, *args, **kwargs)

    monkeypatch.setattr(dense, "encode_texts", counted)
    return calls


def _retriever(encoder, folder, precision="fp32") -> DenseRetriever:
    return DenseRetriever(encoder, precision=precision, show_progress=False, cache_dir=str(folder))


def test_same_weights_same_corpus_reuse_the_vectors(tmp_path, encodings):
    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT)
    first = _retriever(encoder, tmp_path)
    first.index(CORPUS)
    ranking = first.search({"q": "aspirin heart attack"}, 6)
    assert encodings == [6] and len(list(tmp_path.glob("*.npy"))) == 1
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["documents"] == 6 and meta["precision"] == "fp32"
    again = _retriever(encoder, tmp_path)
    again.index(CORPUS)
    assert encodings == [6] and again.timings["embeddings_reused"] == 1.0  # no corpus encoding the second time
    assert again.search({"q": "aspirin heart attack"}, 6) == ranking


@pytest.mark.parametrize("change", ["weights", "text", "precision"])
def test_anything_that_changes_the_vectors_encodes_again(tmp_path, encodings, change):
    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT)
    _retriever(encoder, tmp_path).index(CORPUS)
    corpus, precision = dict(CORPUS), "fp32"
    if change == "weights":
        with torch.no_grad():
            next(encoder.parameters()).view(-1)[0] += 1e-3
    elif change == "text":
        corpus["d1"] = Document("Aspirin", "Aspirin reduces the risk of stroke.")
    else:
        precision = "bf16"
    _retriever(encoder, tmp_path, precision).index(corpus)
    assert encodings == [6, 6] and len(list(tmp_path.glob("*.npy"))) == 2


def test_a_second_evaluation_reuses_the_first_runs_embeddings(compose_cfg, tmp_path, encodings):
    overrides = ["task=evaluate", "retriever=dense", *TINY_MODEL_OVERRIDES, "retriever.show_progress=false",
                 f"retriever.cache_dir={tmp_path / 'shared'}", "seed=0"]  # fmt: skip
    first = train(compose_cfg(overrides))
    second = train(compose_cfg(overrides))
    assert first["test"] == second["test"] and len(encodings) == 1  # the same random model: one corpus encoding
