"""Index refresh cost: one fixed training budget with no refresh, synchronous and asynchronous refresh.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/refresh.py [--docs 600] [--steps 12] [--every 4]

Each row trains the packaged MiniLM with ``negatives=ance`` for ``--steps`` optimizer steps on SciFact's train
queries over a seeded corpus subset of ``--docs`` abstracts (every training positive plus random others, so
one refresh re-encodes a known amount). ``none`` never refreshes (BM25 warm-up negatives throughout); ``sync``
and ``async`` refresh every ``--every`` steps. Timed: ``trainer.fit`` wall time (no test evaluation). Also
printed: the mean split of one synchronous refresh (encode, index, mine) and the async refreshes' staleness.
Last line: one JSON object with ``async_overhead`` = async wall time / no-refresh wall time - 1 (and
``sync_overhead`` likewise). On a machine with one CPU and no accelerator the inferencer competes with the
trainer for the same cores; with a second device (``--inferencer-device cuda:1``) it does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from pathlib import Path

from common import load_scifact, machine, print_json, print_table
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from retrieval_lab.callbacks.index_refresh import SyncIndexRefresh
from retrieval_lab.training.fit import fit


def write_subset(root: Path, num_docs: int, seed: int) -> Path:
    """SciFact train queries over every train positive plus seeded random abstracts, in the BEIR layout."""
    ds = load_scifact(splits=["train"])
    qrels = ds.qrels["train"]
    keep = {d for docs in qrels.values() for d in docs}
    others = sorted(set(ds.corpus) - keep)
    random.Random(seed).shuffle(others)
    keep |= set(others[: max(0, num_docs - len(keep))])
    folder = root / "beir" / "scifact_subset"
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as out:
        for did in sorted(keep):
            out.write(json.dumps({"_id": did, "title": ds.corpus[did].title, "text": ds.corpus[did].text}) + "\n")
    with (folder / "queries.jsonl").open("w") as out:
        for qid in qrels:
            out.write(json.dumps({"_id": qid, "text": ds.queries[qid]}) + "\n")
    rows = [f"{q}\t{d}\t{r}" for q, docs in qrels.items() for d, r in docs.items()]
    (folder / "qrels" / "train.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *rows]) + "\n")
    return root


def run(mode: str, data_root: Path, out: Path, args) -> tuple[float, list[dict]]:
    overrides = [
        "data=beir", "data.name=scifact_subset", f"paths.data_root={data_root}", f"paths.output_dir={out}",
        "negatives=ance", "negatives.warmup.show_progress=false", "logger=csv", "trainer.enable_progress_bar=false",
        f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1", f"datamodule.batch_size={args.batch_size}",
        f"datamodule.train_doc_max_length={args.train_doc_max_length}", "datamodule.show_progress=false",
        f"callbacks.dev_eval.every_n_steps={args.steps}", f"seed={args.seed}",
    ]  # fmt: skip
    if mode != "none":
        overrides += [f"index_refresh={mode}", f"index_refresh.every_n_steps={args.every}"]
    if mode == "async":
        if args.inferencer_device:
            overrides.append(f"index_refresh.device={args.inferencer_device}")
        if args.inferencer_threads:
            overrides.append(f"index_refresh.num_threads={args.inferencer_threads}")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="retrieval_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides + args.override)
    start = time.perf_counter()
    result, _ = fit(cfg)
    seconds = time.perf_counter() - start
    refresh = next((cb for cb in result.callbacks if isinstance(cb, SyncIndexRefresh)), None)
    return seconds, [] if refresh is None else refresh.history


def mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return round(sum(values) / len(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600, help="corpus subset size (all train positives kept)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=4, help="refresh interval in optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-doc-max-length", type=int, default=128)
    parser.add_argument("--modes", default="none,sync,async")
    parser.add_argument("--inferencer-device", default=None, help="e.g. cuda:1; default: the trainer's")
    parser.add_argument("--inferencer-threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows, result, histories = [], {"docs": args.docs, "steps": args.steps, "every": args.every}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = write_subset(Path(tmp) / "data", args.docs, args.seed)
        for mode in args.modes.split(","):
            seconds, history = run(mode, data_root, Path(tmp) / f"out-{mode}", args)
            histories[mode] = history
            result[f"{mode}_s"] = round(seconds, 2)
            versions = ",".join(str(r["version"]) for r in history) or "-"
            staleness = ",".join(str(r["staleness"]) for r in history if "staleness" in r) or "-"
            rows.append({"refresh": mode, "wall_s": f"{seconds:.1f}", "refreshes": len(history),
                         "versions": versions, "staleness": staleness})  # fmt: skip
    print_table(rows)
    sync = histories.get("sync", [])
    if sync:
        split = {k: mean(sync, f"{k}_s") for k in ("encode", "index", "mine")}
        result["sync_refresh_split_s"] = split
        print("one synchronous refresh, mean seconds: " + ", ".join(f"{k} {v}" for k, v in split.items()))
    if histories.get("async"):
        result["async_refreshes"] = len(histories["async"])
        result["async_mean_staleness"] = mean(histories["async"], "staleness")
    print(f"machine: {machine()}")
    for mode in ("sync", "async"):
        if f"{mode}_s" in result and "none_s" in result:
            result[f"{mode}_overhead"] = round(result[f"{mode}_s"] / result["none_s"] - 1, 3)
    print_json(result)


if __name__ == "__main__":
    main()
