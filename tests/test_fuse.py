"""task=fuse: ranx fusion of saved TREC runs, scored with the lab's metrics; weight 1/0 gives back the first run;
bad input is refused by name."""

from __future__ import annotations

import json

import pytest

from retrieval_lab.eval.trec import write_trec_run
from retrieval_lab.main import train

# tiny data: q1 -> d1, q2 -> d2 (grade 2), q3 -> d6 on test
GOOD = {"q1": {"d1": 9.0, "d2": 1.0}, "q2": {"d2": 5.0, "d3": 4.0}, "q3": {"d6": 3.0, "d5": 2.0}}
BAD = {"q1": {"d4": 9.0, "d1": 1.0}, "q2": {"d3": 5.0, "d2": 4.0}, "q3": {"d5": 3.0, "d6": 2.0}}


@pytest.fixture
def runs(tmp_path):
    paths = [tmp_path / "good.trec", tmp_path / "bad.trec"]
    write_trec_run(GOOD, paths[0])
    write_trec_run(BAD, paths[1])
    return [str(p) for p in paths]


@pytest.mark.parametrize("weights", ["[1.0,0.0]", "[0.0,1.0]"])
def test_weighted_fusion_with_one_weight_ranks_as_that_run(compose_cfg, tmp_path, runs, weights):
    metrics = train(compose_cfg(["task=fuse", f"task.runs=[{runs[0]},{runs[1]}]", f"task.weights={weights}"]))
    if weights == "[1.0,0.0]":
        assert metrics["test"]["mrr@10"] == 1.0  # the good run's order: every relevant document first
    else:
        assert metrics["test"]["mrr@10"] <= 0.5  # the bad run's: a wrong document first for every query
    fused = (tmp_path / "out" / "run.test.trec").read_text().splitlines()
    assert {line.split()[2] for line in fused if line.startswith("q1 ")} == {"d1", "d2", "d4"}  # the union
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics


def test_reciprocal_rank_fusion_runs_with_ranx_parameters(compose_cfg, runs):
    metrics = train(compose_cfg(["task=fuse", f"task.runs=[{runs[0]},{runs[1]}]", "task.method=rrf",
                                 "task.norm=rank", "task.params={k: 60}"]))  # fmt: skip
    assert 0.5 <= metrics["test"]["mrr@10"] <= 1.0 and metrics["fusion"]["params"] == {"k": 60}


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (["task.weights=[1.0]"], ValueError, "task.weights has 1 values for 2 runs"),
        (["task.split=dev"], ValueError, r"task.splits \['dev'\] not in dataset"),
        (["task.runs=[nowhere.trec,also.trec]"], FileNotFoundError, "no such TREC run file"),
    ],
)
def test_bad_fusion_settings_are_refused(compose_cfg, runs, extra, error, message):
    with pytest.raises(error, match=message):
        train(compose_cfg(["task=fuse", f"task.runs=[{runs[0]},{runs[1]}]", *extra]))
