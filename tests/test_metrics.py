"""The lab's metrics (pytrec_eval) agree with a second implementation (ranx) on the same runs."""

from __future__ import annotations

import random

import pytest

from retrieval_lab.eval.metrics import DEFAULT_METRICS, evaluate_run, parse_metric, per_query_metrics
from retrieval_lab.eval.trec import read_trec_run, write_trec_run


def test_hand_computed_values():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0}, "q2": {"b": 5.0, "y": 4.0, "c": 1.0}}
    m = per_query_metrics(qrels, run, ["mrr@10", "mrr@1", "recall@1", "recall@2", "success@1", "success@2"])
    assert m["mrr@10"] == {"q1": 0.5, "q2": 1.0}
    assert m["mrr@1"] == {"q1": 0.0, "q2": 1.0}
    assert m["recall@2"] == {"q1": 1.0, "q2": 0.5}
    assert m["recall@1"] == {"q1": 0.0, "q2": 0.5}  # capped at 1/2 for a query with two relevant documents
    assert m["success@1"] == {"q1": 0.0, "q2": 1.0} and m["success@2"] == {"q1": 1.0, "q2": 1.0}


def test_unanswered_query_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert evaluate_run(qrels, {"q1": {"a": 1.0}}, ["ndcg@10"])["ndcg@10"] == 0.5


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric 'ndgc@10'"):
        parse_metric("ndgc@10")


def _random_case(seed: int, n_queries: int = 60, n_docs: int = 300):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 6))}
        picked = rng.sample(docs, 150) + list(qrels[qid])[: rng.randint(0, 3)]
        run[qid] = {d: rng.random() for d in picked}  # distinct floats: no ties to break differently
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_check_against_ranx(seed, tmp_path):
    ranx = pytest.importorskip("ranx", reason="ranx is the second implementation (pip install -e .[dev])")
    qrels, run = _random_case(seed)
    # Round-trip through the TREC file so the saved run is what gets checked.
    run = read_trec_run(write_trec_run(run, tmp_path / "run.trec"))
    names = [*DEFAULT_METRICS, "success@1", "success@5"]
    ours = evaluate_run(qrels, run, names)
    judged = {q: {d: r for d, r in docs.items() if r > 0} for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs}  # both skip queries with nothing relevant
    run = {q: docs for q, docs in run.items() if q in judged}
    ranx_names = {name: name.replace("success@", "hit_rate@") for name in names}  # ranx calls it hit rate
    theirs = ranx.evaluate(ranx.Qrels(judged), ranx.Run(run), list(ranx_names.values()))
    for name in names:
        assert ours[name] == pytest.approx(theirs[ranx_names[name]], abs=1e-4), name
