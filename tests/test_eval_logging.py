"""Evaluation tasks log to the configured loggers too: a wandb run (job type evaluate/test) and the CSV file."""

from __future__ import annotations

import csv

from retrieval_lab.main import train
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_MODEL_OVERRIDES


def test_task_evaluate_logs_its_figures_to_wandb_and_csv(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = ["task=evaluate", "retriever=bm25", "retriever.show_progress=false"]
    metrics = train(compose_cfg([*base, "logger=wandb"]))
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    import wandb

    assert wandb.run is None  # finished
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for logged in (b"hydra_choices", b"test/ndcg@10", b"evaluate", b"k1"):
        assert logged in record, logged
    out = tmp_path / "csv_run"
    train(compose_cfg([*base, "logger=csv", f"paths.output_dir={out}"]))
    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    assert float(rows[0]["test/ndcg@10"]) == metrics["test"]["ndcg@10"]


def test_task_test_logs_the_trained_runs_config(compose_cfg, train_data, tmp_path):
    train(compose_cfg([*FAST_TRAIN_OVERRIDES, "task.splits=[]"], data_root=train_data))
    out = tmp_path / "tested"
    tested = train(compose_cfg(["task=test", f"task.run_dir={tmp_path / 'out'}", "logger=csv",
                                f"paths.output_dir={out}", *TINY_MODEL_OVERRIDES]))  # fmt: skip
    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    assert float(rows[0]["test/ndcg@10"]) == tested["test"]["ndcg@10"]
    hparams = (out / "csv" / "version_0" / "hparams.yaml").read_text()
    assert "task.splits" not in hparams and "splits: []" in hparams  # the training run's config, not task=test's
