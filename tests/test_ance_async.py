"""index_refresh=async: the inferencer process, switching at step boundaries, and a killed inferencer."""

from __future__ import annotations

import csv
import json
import logging
import time

import numpy as np
import pytorch_lightning as pl

from retrieval_lab.callbacks.index_refresh import AsyncIndexRefresh
from retrieval_lab.data.beir import Document
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.negatives import inferencer
from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.mining import encode_corpus
from retrieval_lab.training.fit import fit
from tests.conftest import BF16_ENCODING, TINY_BERT
from tests.test_ance import ANCE, _refresh_callback, _spy_on_draws, _train_positives
from tests.test_train import _cli, dev_precisions

# Inferencers start after steps 2, 4 and 6 (none after the last, 8); max_staleness 1 makes the trainer wait
# for each at the next step, so the run is deterministic however slow the process is to start.
ASYNC = [o for o in ANCE if not o.startswith("index_refresh=")] + [
    "index_refresh=async",
    "index_refresh.max_staleness=1",
    "index_refresh.num_threads=1",
]


class KillInferencer(pl.Callback):
    """SIGKILLs the first inferencer as soon as it is running."""

    killed: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        refresh = next(cb for cb in trainer.callbacks if isinstance(cb, AsyncIndexRefresh))
        if refresh.process is not None and not KillInferencer.killed:
            refresh.process.kill()
            KillInferencer.killed.append(refresh.job.version)


def test_async_refresh_switches_tables_at_step_boundaries(compose_cfg, train_data, tmp_path, monkeypatch):
    drawn = _spy_on_draws(monkeypatch)
    result, _ = fit(compose_cfg(ASYNC, data_root=train_data))
    out, positives = tmp_path / "out", _train_positives()
    folder = out / "ance_tables"
    refresh = _refresh_callback(result)
    assert isinstance(refresh, AsyncIndexRefresh)
    # snapshot at 2 -> used from 3, 4 -> 5, 6 -> 7: staleness one step each
    assert [(r["snapshot_step"], r["step"], r["version"], r["staleness"]) for r in refresh.history] == [
        (2, 3, 1, 1), (4, 5, 2, 1), (6, 7, 3, 1),
    ]  # fmt: skip
    assert tables.latest_version(folder) == 3 and refresh.process is None
    assert not list((folder / "inferencer").glob("snapshot-*.pt"))  # snapshots are removed once used
    for version in (1, 2, 3):
        negatives = tables.load(folder, version).negatives
        assert all(len(ids) == 3 and not set(ids) & positives[q] for q, ids in negatives.items())
    versions_used = [v for v, _, _ in drawn]
    assert versions_used[0] is None and {1, 2, 3} <= set(versions_used)
    assert versions_used == sorted(versions_used, key=lambda v: -1 if v is None else v)

    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("index_refresh/version")]
    assert [int(float(r["index_refresh/version"])) for r in logged] == [1, 2, 3]
    for key in ("encode_s", "index_s", "mine_s", "staleness", "positive_mean_rank", "bm25_overlap"):
        assert all(r[f"index_refresh/{key}"] != "" for r in logged), key


def test_a_killed_inferencer_leaves_training_on_the_previous_table(compose_cfg, train_data, tmp_path, caplog):
    KillInferencer.killed.clear()
    overrides = [*ASYNC, "+callbacks.kill._target_=tests.test_ance_async.KillInferencer"]
    with caplog.at_level(logging.ERROR):
        result, _ = fit(compose_cfg(overrides, data_root=train_data))
    refresh = _refresh_callback(result)
    assert KillInferencer.killed == [1]
    assert result.trainer.global_step == 8  # training went on
    assert refresh.failures == 1
    assert "exit code -9" in caplog.text and "next refresh tries again" in caplog.text
    # the killed attempt published nothing; the next two refreshes did, numbered on from the table in use
    assert [(r["snapshot_step"], r["version"]) for r in refresh.history] == [(4, 1), (6, 2)]
    assert tables.latest_version(tmp_path / "out" / "ance_tables") == 2
    rows = list(csv.DictReader((tmp_path / "out" / "csv" / "version_0" / "metrics.csv").open()))
    assert [r["step"] for r in rows if r.get("index_refresh/failures")] == ["3"]


def test_async_schedule_state_round_trips():
    before = AsyncIndexRefresh("unused", every_n_steps=5)
    before.version, before.last_step, before.failures = 2, 10, 1
    before.history = [{"step": 7, "version": 1, "staleness": 2}]
    after = AsyncIndexRefresh("unused", every_n_steps=5)
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    assert (after.version, after.last_step, after.failures, after.history) == (2, 10, 1, before.history)


def _ddp_run(overrides: list[str], train_data, run_dir):
    """Train on the tiny data with 2 CPU ranks (gloo), a refresh every 2 steps, 2 epochs, every encoding (dev,
    refresh, test) in bf16 whatever the CPU (issue 13); the run folder."""
    overrides = [o for o in overrides if not o.startswith("index_refresh.every_n_steps")]
    done = _cli(["data=beir", "data.name=tiny", f"paths.data_root={train_data}", f"hydra.run.dir={run_dir}",
                 *overrides, "index_refresh.every_n_steps=2", "trainer=ddp", "trainer.max_epochs=2",
                 *BF16_ENCODING["bf16"], "index_refresh.precision=bf16"],
                capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert dev_precisions((run_dir / "train.log").read_text()) == {"bf16"}
    return run_dir


def test_ddp_sync_refresh_encodes_in_shards_and_mines_once(train_data, tmp_path):
    # 2 ranks x batch 4 over 16 queries: 2 steps an epoch, 4 in all; refreshes after steps 2 (not after 4)
    run_dir = _ddp_run(ANCE, train_data, tmp_path / "ddp")
    folder = run_dir / "ance_tables"
    assert tables.latest_version(folder) == 1
    table = tables.load(folder, 1)
    assert table.meta["encode_ranks"] == 2 and table.meta["step"] == 2
    positives = _train_positives()
    assert all(len(ids) == 3 and not set(ids) & positives[q] for q, ids in table.negatives.items())


def test_ddp_async_refresh_runs_one_inferencer_and_every_rank_switches(train_data, tmp_path):
    # 2 ranks x batch 4 over 16 queries: 4 steps; rank 0 starts an inferencer after step 2 and (max_staleness 1)
    # waits for it at step 3, where both ranks switch to version 1; none starts after the last step
    run_dir = _ddp_run(ASYNC, train_data, tmp_path / "ddp_async")
    folder = run_dir / "ance_tables"
    assert tables.latest_version(folder) == 1 and not list((folder / "inferencer").glob("snapshot-*.pt"))
    positives = _train_positives()
    assert all(len(ids) == 3 and not set(ids) & positives[q] for q, ids in tables.load(folder, 1).negatives.items())
    log_text = (run_dir / "train.log").read_text()
    assert log_text.count("inferencer started for version") == 1
    assert "index refresh at step 3" in log_text and "'staleness': 1" in log_text
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    logged = [(int(r["step"]), int(float(r["index_refresh/version"]))) for r in rows if r.get("index_refresh/version")]
    assert logged == [(3, 1)]


def test_refresh_can_encode_documents_shorter_than_evaluation():
    encoder = BiEncoder(config_overrides=TINY_BERT, doc_max_length=32)
    corpus = {f"d{i}": Document("", " ".join(f"word{j}" for j in range(i, i + 40))) for i in range(3)}
    short = encode_corpus(encoder, corpus, list(corpus), doc_max_length=6, show_progress=False)
    full = encode_corpus(encoder, corpus, list(corpus), show_progress=False)
    encoder.doc_max_length = 6
    expected = encode_texts(encoder, [d.full_text() for d in corpus.values()], "docs", show_progress=False)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    assert not np.allclose(short, full, atol=1e-3)


def test_a_hung_inferencer_is_killed_at_its_timeout_and_training_finishes(compose_cfg, train_data, tmp_path, caplog):
    # max_staleness 1 makes the trainer wait for each inferencer: without the timeout this run never ends
    overrides = [*ASYNC, "index_refresh.timeout_s=8", "index_refresh.inferencer_fn=tests.hung_inferencer.sleep_forever"]
    start = time.monotonic()
    with caplog.at_level(logging.ERROR):
        result, _ = fit(compose_cfg(overrides, data_root=train_data))
    took = time.monotonic() - start
    refresh = _refresh_callback(result)
    assert result.trainer.global_step == 8 and refresh.process is None
    assert refresh.failures == 3 and refresh.history == []  # the refreshes after steps 2, 4, 6 each hung
    assert caplog.text.count("no result within index_refresh.timeout_s=8") == 3
    assert "last heartbeat: 'pretending to encode'" in caplog.text
    assert took < 3 * 8 + 120, took  # three timeouts plus the run's own budget
    folder = tmp_path / "out" / "ance_tables"
    assert tables.latest_version(folder) is None and not list(folder.glob("heartbeat-*")) + list(
        folder.glob("status-*")
    )


def test_a_refresh_in_flight_at_a_checkpoint_restarts_on_resume():
    before = AsyncIndexRefresh("unused", every_n_steps=5)
    before.version, before.last_step = 1, 10
    assert not before.due(12, total_steps=100)  # two steps after the last refresh: not yet
    before.job = object.__new__(inferencer.InferencerJob)
    object.__setattr__(before.job, "step", 10)
    after = AsyncIndexRefresh("unused", every_n_steps=5)
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    assert after.restart_pending and after.due(12, total_steps=100)  # the lost refresh starts again at once
    assert not after.due(100, total_steps=100)  # but never at the very end
    idle = AsyncIndexRefresh("unused", every_n_steps=5)
    idle.load_state_dict(json.loads(json.dumps(AsyncIndexRefresh("unused", every_n_steps=5).state_dict())))
    assert not idle.restart_pending
