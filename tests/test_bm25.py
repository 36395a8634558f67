"""BM25 through bm25s: sensible rankings on tiny data, the published SciFact number on the real data."""

from __future__ import annotations

import json

import pytest

from retrieval_lab.data.beir import load_beir
from retrieval_lab.main import train
from retrieval_lab.retrievers.bm25 import BM25Retriever
from tests.conftest import TINY_QUERIES


def test_bm25_ranks_the_matching_document_first(tiny_data):
    ds = load_beir("tiny", tiny_data)
    run = BM25Retriever(show_progress=False).retrieve(ds.corpus, TINY_QUERIES, k=3)
    assert {q: max(docs, key=docs.get) for q, docs in run.items()} == {
        "q1": "d1",
        "q2": "d2",
        "q3": "d6",
        "q4": "d4",
    }


@pytest.mark.parametrize("kwargs", [{"method": "okapi"}, {"k1": -1.0}, {"b": 1.5}])
def test_bad_bm25_values_are_refused(kwargs):
    with pytest.raises(ValueError, match="retriever\\."):
        BM25Retriever(**kwargs)


def test_bad_task_values_fail_before_data_is_read(compose_cfg):
    cfg = compose_cfg(["task=evaluate", "retriever=bm25", "task.top_k=5", "paths.data_root=/nonexistent"])
    with pytest.raises(ValueError, match="task.top_k is 5"):
        train(cfg)


@pytest.mark.data
def test_bm25_scifact_reproduces_published_ndcg(compose_cfg, shared_data, tmp_path):
    cfg = compose_cfg(["task=evaluate", "retriever=bm25", "data=scifact", "retriever.show_progress=false"],
                      data_root=shared_data)  # fmt: skip
    metrics = train(cfg)
    assert 0.66 <= metrics["test"]["ndcg@10"] <= 0.70  # BEIR 0.665, Anserini 0.679, bm25s 0.680
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
