"""Shared helpers for the benchmarks: data location, timing, the last-line JSON."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from retrieval_lab.data.beir import RetrievalDataset, load_beir


def load_scifact(splits: list[str] | None = None) -> RetrievalDataset:
    root = os.environ.get("RETRIEVAL_LAB_DATA")
    if not root:
        sys.exit("Set RETRIEVAL_LAB_DATA to the folder holding beir/scifact (e.g. ../shared/data).")
    return load_beir("scifact", Path(root), splits=splits or ["test"])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new (spawned) process: one benchmark row never warms a cache another row then uses."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
    }


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-|-".join("-" * widths[k] for k in keys))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(widths[k]) for k in keys))


def print_json(obj: dict) -> None:
    print(json.dumps(obj), flush=True)
