"""ANCE: the versioned negatives table, the ANN sampler and the synchronous index refresh, on a tiny model."""

from __future__ import annotations

import csv
import json
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

import retrieval_lab
import retrieval_lab.conf
from retrieval_lab.callbacks.index_refresh import SyncIndexRefresh
from retrieval_lab.data.beir import Document
from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.ance import AnnNegatives
from retrieval_lab.negatives.base import NegativeSampler
from retrieval_lab.negatives.random import RandomNegatives
from retrieval_lab.training.fit import fit
from retrieval_lab.utils.instantiate import make
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_CORPUS, TINY_MODEL_OVERRIDES, TRAIN_QRELS

CONF = Path(retrieval_lab.conf.__file__).parent  # conf/ at the top level, installed as retrieval_lab.conf
# 16 training queries in batches of 4: 4 steps an epoch, 8 in all; refreshes after steps 2, 4 and 6 (none after
# the last). top_k 3 of 24 documents, so a table is a real choice, not the whole corpus.
ANCE = [o for o in FAST_TRAIN_OVERRIDES if not o.startswith("negatives=")] + [
    "module.optimizer.lr=1e-3",
    "negatives=ance",
    "negatives.top_k=3",
    "negatives.poll_seconds=0",
    "negatives.warmup.show_progress=false",
    "index_refresh=sync",
    "index_refresh.every_n_steps=2",
]


class FailAtStep(pl.Callback):
    """Stops a run with an error right after optimizer step ``step``, before any later checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def load_latest(folder: Path) -> tables.NegativesTable | None:
    version = tables.latest_version(folder)
    return None if version is None else tables.load(folder, version)


def _train_positives() -> dict[str, set[str]]:
    return {q: set(docs) for q, docs in TRAIN_QRELS["train"].items()}


def _spy_on_draws(monkeypatch) -> list[tuple[int | None, str, list[str]]]:
    """Record (table version in use, query, negatives) for every example the data pipeline builds."""
    drawn: list = []
    real = AnnNegatives.draw

    def spy(self, table, qid, positives, rng):
        out = real(self, table, qid, positives, rng)
        drawn.append((None if table is None else table.version, qid, out))
        return out

    monkeypatch.setattr(AnnNegatives, "draw", spy)
    return drawn


def _refresh_callback(result) -> SyncIndexRefresh:
    return next(cb for cb in result.callbacks if isinstance(cb, SyncIndexRefresh))


# --- the table ----------------------------------------------------------------------------------------------


def test_publish_load_latest_and_versions_only_grow(tmp_path):
    folder = tmp_path / "tables"
    assert load_latest(folder) is None and tables.latest_version(folder) is None
    tables.publish(folder, 1, {"q1": ["d2", "d3"]}, {"step": 10})
    tables.publish(folder, 2, {"q1": ["d3"]}, {"step": 20})
    latest = load_latest(folder)
    assert (latest.version, latest.negatives, latest.meta) == (2, {"q1": ["d3"]}, {"step": 20})
    assert tables.load(folder, 1).negatives == {"q1": ["d2", "d3"]}
    with pytest.raises(ValueError, match="not newer than the latest"):
        tables.publish(folder, 2, {"q1": ["d9"]})
    assert sorted(p.name for p in folder.iterdir()) == ["LATEST", "table-v00001.json", "table-v00002.json"]

    assert tables.prune(folder, 1) == [2]
    assert load_latest(folder).version == 1 and not tables.table_path(folder, 2).exists()
    tables.publish(folder, 2, {"q1": ["d4"]})  # a resumed run publishes the next version again
    assert tables.prune(folder, 0) == [1, 2] and load_latest(folder) is None


def _poll(folder: Path, num_queries: int, stop: threading.Event) -> tuple[set[int], list[str]]:
    """Read the latest table until ``stop``; returns the versions seen complete and every bad read.

    The last read starts after ``stop`` is set, so it sees what the writer left (a slow reader on a busy CI
    machine once missed the final version when the loop ended mid-read)."""
    seen, bad = set(), []
    while True:
        last = stop.is_set()
        try:
            table = load_latest(folder)
        except (ValueError, OSError) as err:  # JSONDecodeError is a ValueError
            bad.append(repr(err)[:80])
            table = None
        if table is not None:
            if len(table.negatives) != num_queries or table.meta["version"] != table.version:
                bad.append(f"version {table.version}: {len(table.negatives)} queries")
            seen.add(table.version)
        if last:
            return seen, bad


def _reader_while(write, folder: Path, num_queries: int) -> tuple[set[int], list[str]]:
    stop, out = threading.Event(), {}

    def read() -> None:
        out["seen"], out["bad"] = _poll(folder, num_queries, stop)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        write()
    finally:
        time.sleep(0.05)
        stop.set()
        reader.join()
    return out["seen"], out["bad"]


def _big_table(version: int, num_queries: int) -> dict[str, list[str]]:
    return {f"q{i}": [f"doc-{version}-{i}-{j}" for j in range(200)] for i in range(num_queries)}


def test_table_is_never_read_half_written(tmp_path):
    folder, n = tmp_path / "tables", 2000  # ~5 MB a table: each write takes long enough to be caught mid-way

    def publish_many():
        for v in range(1, 9):
            tables.publish(folder, v, _big_table(v, n), {"version": v})

    seen, bad = _reader_while(publish_many, folder, n)
    assert not bad, bad[:3]
    assert len(seen) >= 2 and max(seen) == 8  # the reader really ran alongside the writer


def test_the_reader_catches_a_table_written_in_place(tmp_path):
    """Control for the test above: a writer that writes the final file in place is caught mid-write."""
    folder, n = tmp_path / "tables", 2000

    def write_in_place():
        folder.mkdir()
        for v in range(1, 4):
            text = json.dumps({"version": v, "meta": {"version": v}, "negatives": _big_table(v, n)})
            with tables.table_path(folder, v).open("w") as handle:
                (folder / tables.LATEST).write_text(f"{v}\n")
                for start in range(0, len(text), len(text) // 10):
                    handle.write(text[start : start + len(text) // 10])
                    handle.flush()
                    time.sleep(0.01)

    _, bad = _reader_while(write_in_place, folder, n)
    assert bad


# --- the sampler --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["negatives.num_negatives=5", "negatives.top_k=3"], r"negatives.num_negatives \(5\) is larger"),
        (["negatives.num_negatives=0"], "negatives.num_negatives must be >= 1"),
        (["negatives.top_k=0"], "negatives.top_k must be >= 1"),
        (["negatives.poll_seconds=-1"], "negatives.poll_seconds"),
        (["negatives.warmup.num_negatives=2"], r"negatives.warmup.num_negatives \(2\) must equal"),
        (["index_refresh.every_n_steps=0"], "index_refresh.every_n_steps must be >= 1 or null"),
        (["index_refresh.top_k=0"], "index_refresh.top_k must be >= 1"),
        (["index_refresh.precision=fp16"], "index_refresh.precision must be one of"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_at_construction(compose_cfg, overrides, message):
    cfg = compose_cfg(["negatives=ance", "index_refresh=sync", *overrides])
    with pytest.raises(ValueError, match=message):
        make(cfg.negatives)
        make(cfg.index_refresh)


def test_index_factory_is_checked_before_training(compose_cfg):
    """A bad index_refresh.index_factory is refused in on_train_start, for a bi-encoder and for ColBERT's token
    index (where "auto" sizes an IVF to the corpus)."""
    for model, good in ((TINY_MODEL_OVERRIDES, ["Flat", "IVF4,Flat"]), (["model=colbert", *TINY_MODEL_OVERRIDES],
                                                                    ["Flat", "auto", "IVF4,SQ8"])):  # fmt: skip
        cfg = compose_cfg(["negatives=ance", "index_refresh=sync", *model])
        encoder = make(cfg.model)
        for factory in good:
            make(cfg.index_refresh, index_factory=factory)._check_index_factory(encoder)
        with pytest.raises(ValueError, match="index_refresh.index_factory"):
            make(cfg.index_refresh, index_factory="IVF4,Bogus")._check_index_factory(encoder)


def test_sampler_warms_up_then_follows_the_newest_table(tmp_path, monkeypatch):
    corpus = {d: Document(title, text) for d, (title, text) in TINY_CORPUS.items()}
    queries, positives = {"q1": "aspirin heart attack"}, {"q1": {"d1"}}
    folder = tmp_path / "tables"
    sampler = AnnNegatives(folder, warmup=RandomNegatives(2), num_negatives=2, top_k=3, poll_seconds=60)
    sampler.prepare(corpus, queries, positives)
    warmup_alone = RandomNegatives(2)
    warmup_alone.prepare(corpus, queries, positives)
    warm = sampler.sample("q1", {"d1"}, random.Random(0))
    assert sampler.version is None and warm == warmup_alone.sample("q1", {"d1"}, random.Random(0))

    tables.publish(folder, 1, {"q1": ["d5", "d6", "d4", "d3"]})
    clock = [time.monotonic()]
    monkeypatch.setattr("retrieval_lab.negatives.ance.time.monotonic", lambda: clock[0])
    sampler.reload()
    for seed in range(20):  # only the top 3 of the table, never a positive even if a table held one
        picked = sampler.sample("q1", {"d1", "d6"}, random.Random(seed))
        assert len(picked) == 2 and set(picked) <= {"d5", "d4"}
    tables.publish(folder, 2, {"q1": ["d2", "d3", "d4"]})
    assert set(sampler.sample("q1", {"d1"}, random.Random(0))) <= {"d5", "d6", "d4"}  # checked < 60 s ago
    clock[0] += 61
    assert set(sampler.sample("q1", {"d1"}, random.Random(0))) <= {"d2", "d3", "d4"} and sampler.version == 2


def test_under_a_schedule_each_batch_takes_the_table_of_its_step(tmp_path, monkeypatch):
    """index_refresh=sync every 2 steps: batch g uses the newest table mined at a step <= g - 1 (what one process
    sees, Lightning fetching one batch ahead); a worker waits for a table that is due but not out yet, the
    training process itself refuses to (it would wait forever)."""
    corpus = {d: Document(title, text) for d, (title, text) in TINY_CORPUS.items()}
    folder = tmp_path / "tables"
    sampler = AnnNegatives(folder, warmup=RandomNegatives(1), num_negatives=1, top_k=1, poll_seconds=0)
    sampler.prepare(corpus, {"q1": "aspirin"}, {"q1": {"d1"}})
    sampler.follow_schedule(2)
    tables.publish(folder, 1, {"q1": ["d2"]}, meta={"step": 2})
    tables.publish(folder, 2, {"q1": ["d3"]}, meta={"step": 4})
    chosen = {g: getattr(sampler.table_for_batch(g), "version", None) for g in range(6)}
    assert chosen == {0: None, 1: None, 2: None, 3: 1, 4: 1, 5: 2}  # batches 3-4 after step 2's refresh, ...
    assert sampler.sample_at("q1", {"d1"}, random.Random(0), 4) == ["d2"]  # not the newest table (d3)
    with pytest.raises(RuntimeError, match="refresh at step 6"):
        sampler.table_for_batch(7)  # due after step 6, not published, and this is no worker
    monkeypatch.setattr("retrieval_lab.negatives.ance.torch_worker", lambda: SimpleNamespace(id=0))
    timer = threading.Timer(0.3, lambda: tables.publish(folder, 3, {"q1": ["d4"]}, meta={"step": 6}))
    timer.start()
    started = time.monotonic()
    assert sampler.sample_at("q1", {"d1"}, random.Random(0), 7) == ["d4"] and time.monotonic() - started >= 0.25
    timer.join()
    sampler.follow_schedule(2, accumulate=2)  # two batches a step: the refresh after step 2 ends batch 3
    assert [getattr(sampler.table_for_batch(g), "version", None) for g in (4, 5, 8, 9)] == [None, 1, 1, 2]


class RecordBatches(pl.Callback):
    def __init__(self) -> None:
        self.docs: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.docs.append(batch["docs"]["input_ids"].clone())


def test_table_switches_do_not_depend_on_the_number_of_workers(compose_cfg, train_data, tmp_path):
    # Refreshes after steps 2, 4 and 6; two workers fetch up to four batches ahead, so with switches by the clock
    # the batches after a refresh were built from the old table where one process used the new one.
    runs = []
    for workers in (0, 2):
        overrides = [
            *ANCE,
            f"datamodule.num_workers={workers}",
            "+callbacks.record._target_=tests.test_ance.RecordBatches",
        ]
        cfg = compose_cfg([*overrides, f"paths.output_dir={tmp_path / f'w{workers}'}"], data_root=train_data)
        torch.manual_seed(0)  # the tiny model's random init (train() seeds; fit() alone does not)
        result, _ = fit(cfg)
        record = next(cb for cb in result.callbacks if isinstance(cb, RecordBatches))
        folder = Path(cfg.paths.output_dir) / "ance_tables"
        runs.append((record.docs, [tables.load(folder, v).negatives for v in (1, 2, 3)]))
    (docs0, tables0), (docs2, tables2) = runs
    assert len(docs0) == len(docs2) == 8 and tables0 == tables2
    assert all(torch.equal(a, b) for a, b in zip(docs0, docs2, strict=True))


# --- the refresh ----------------------------------------------------------------------------------------------


def test_refresh_publishes_new_tables_that_training_reads_and_that_hold_no_positive(
    compose_cfg, train_data, tmp_path, monkeypatch
):
    drawn = _spy_on_draws(monkeypatch)
    result, _ = fit(compose_cfg(ANCE, data_root=train_data))
    out, positives = tmp_path / "out", _train_positives()
    folder = out / "ance_tables"
    refresh = _refresh_callback(result)
    assert [(r["step"], r["version"]) for r in refresh.history] == [(2, 1), (4, 2), (6, 3)]
    assert tables.latest_version(folder) == 3

    train_qids = {ex.qid for ex in result.datamodule.train_data.examples}
    published = {v: tables.load(folder, v).negatives for v in (1, 2, 3)}
    for version, negatives in published.items():
        assert set(negatives) == train_qids
        for qid, ids in negatives.items():
            assert len(ids) == 3 and not set(ids) & positives[qid], (version, qid, ids)
    warmup = result.datamodule.negatives.warmup.candidates
    assert any(published[1][q] != warmup[q][:3] for q in train_qids)  # the model's ranking is not BM25's
    assert any(published[3][q] != published[1][q] for q in train_qids)  # and it moves as the model learns

    # The data pipeline switched to each new table and drew only from it.
    versions_used = [v for v, _, _ in drawn]
    assert versions_used[0] is None and {1, 2, 3} <= set(versions_used)
    assert versions_used == sorted(versions_used, key=lambda v: -1 if v is None else v)
    for version, qid, ids in drawn:
        pool = warmup[qid] if version is None else published[version][qid]
        assert set(ids) <= set(pool) and not set(ids) & positives[qid]

    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("index_refresh/version")]
    assert [int(float(r["index_refresh/version"])) for r in logged] == [1, 2, 3]
    for key in ("encode_s", "index_s", "mine_s", "positive_mean_rank", "positives_in_top_k", "bm25_overlap"):
        assert all(r[f"index_refresh/{key}"] != "" for r in logged), key
    assert 1 <= float(logged[0]["index_refresh/positive_mean_rank"]) <= 24


def test_schedule_state_round_trips():
    before = SyncIndexRefresh("unused", every_n_steps=5)
    before.version, before.last_step, before.history = 2, 10, [{"step": 5, "version": 1}, {"step": 10, "version": 2}]
    after = SyncIndexRefresh("unused", every_n_steps=5)
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    assert (after.version, after.last_step, after.history) == (2, 10, before.history)

    refreshed = []

    def refresh(trainer, pl_module):
        refreshed.append(trainer.global_step)
        after.last_step = trainer.global_step

    after.refresh = refresh
    for step in (10, 10, 11, 14, 15, 15, 20):  # a repeated step (gradient accumulation) refreshes once
        after.on_train_batch_end(SimpleNamespace(global_step=step, estimated_stepping_batches=20), None, None, None, 0)
    assert refreshed == [15]  # not the resumed step 10 again, and not after the last step (20)


def test_resumed_run_continues_the_refresh_schedule(compose_cfg, train_data, tmp_path, monkeypatch):
    # last.ckpt every 3 steps; refreshes after steps 2 and 4; stopped after step 5. The checkpoint (step 3)
    # knows table 1 only, so the resumed run drops table 2, trains on table 1 and publishes 2 and 3 itself.
    overrides = [*ANCE, "callbacks.last_checkpoint.every_n_train_steps=3"]
    stopped = [*overrides, "+callbacks.stop._target_=tests.test_ance.FailAtStep", "+callbacks.stop.step=5"]
    with pytest.raises(RuntimeError, match="stopped at step 5"):
        fit(compose_cfg(stopped, data_root=train_data))
    folder, last = tmp_path / "out" / "ance_tables", tmp_path / "out" / "checkpoints" / "last.ckpt"
    assert tables.latest_version(folder) == 2
    first_table_2 = tables.load(folder, 2)

    drawn = _spy_on_draws(monkeypatch)
    result, _ = fit(compose_cfg(overrides, data_root=train_data), ckpt_path=str(last))
    refresh = _refresh_callback(result)
    assert result.trainer.global_step == 8
    assert [(r["step"], r["version"]) for r in refresh.history] == [(2, 1), (4, 2), (6, 3)]
    assert drawn[0][0] == 1  # the resumed run starts on the table its checkpoint knew
    assert tables.latest_version(folder) == 3
    # (4, 2) in the history is the resumed run's own refresh; resumed exactly, it mined from the same weights at
    # step 4 as the stopped run did, so it published the same table 2 again (a replayed batch once made it differ)
    again = tables.load(folder, 2)
    assert again.meta["step"] == 4 and again.negatives == first_table_2.negatives


# --- configs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "index_refresh").glob("*.yaml")))
def test_index_refresh_options_instantiate(compose_cfg, option):
    cfg = compose_cfg([f"index_refresh={option}", "negatives=ance"])
    callback = make(cfg.index_refresh)
    sampler = make(cfg.negatives)
    assert isinstance(callback, pl.Callback) and isinstance(sampler, NegativeSampler)
    assert callback.table_dir == sampler.table_dir and callback.top_k == sampler.top_k


def test_index_refresh_comes_with_ance_negatives(compose_cfg):
    assert compose_cfg([]).get("index_refresh") is None
    assert compose_cfg(["negatives=bm25"]).get("index_refresh") is None
    for overrides in (["negatives=ance"], ["model=colbert", "negatives=ance"]):
        cfg = compose_cfg(overrides)
        assert cfg.index_refresh._target_.endswith("SyncIndexRefresh") and cfg.index_refresh.every_n_steps == 20
    assert compose_cfg(["negatives=ance", "index_refresh=async"]).index_refresh._target_.endswith("AsyncIndexRefresh")
    assert compose_cfg(["negatives=ance", "~index_refresh"]).get("index_refresh") is None


def test_refresh_interval_sweep_is_one_multirun(compose_cfg):
    sweep = OmegaConf.load(CONF / "experiment" / "ance_scifact_refresh.yaml")
    assert sweep.hydra.mode == "MULTIRUN"
    assert sweep.hydra.sweeper.params["index_refresh.every_n_steps"].split(",")[0] == "null"
    cfg = compose_cfg(["experiment=ance_scifact"])
    assert cfg.negatives._target_.endswith("AnnNegatives") and cfg.index_refresh.every_n_steps >= 1


def test_negatives_comparison_is_one_multirun_and_only_ance_refreshes(compose_cfg):
    sweep = OmegaConf.load(CONF / "experiment" / "ance_scifact_negatives.yaml")
    assert sweep.hydra.mode == "MULTIRUN"
    arms = sweep.hydra.sweeper.params["+experiment/negatives_arm"].split(",")
    assert arms == ["in_batch", "bm25", "ance"]
    cfgs = {arm: compose_cfg(["experiment=ance_scifact_negatives", f"+experiment/negatives_arm={arm}"]) for arm in arms}
    assert cfgs["in_batch"].get("index_refresh") is None and cfgs["bm25"].get("index_refresh") is None
    ance, bm25 = cfgs["ance"], cfgs["bm25"]
    assert ance.negatives._target_.endswith("AnnNegatives") and ance.index_refresh.every_n_steps >= 1
    assert ance.negatives.top_k == ance.index_refresh.top_k == bm25.negatives.top_k == ance.negatives.warmup.top_k
    same_budget = ("trainer", "datamodule", "module")
    assert all(OmegaConf.to_yaml(ance[k]) == OmegaConf.to_yaml(bm25[k]) for k in same_budget)
