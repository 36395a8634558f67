"""Gradient caching: peak memory (RSS) and seconds per step at several batch sizes, with and without caching, beside
sentence-transformers' CachedMultipleNegativesRankingLoss.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/grad_cache.py [--batches 32,128,512] [--chunk 32] [--steps 2]

Every row runs in a fresh process (so its peak RSS is its own): MiniLM (the packaged all-MiniLM-L6-v2), SciFact
(query, positive) pairs, queries at 64 and documents at 128 tokens, InfoNCE at temperature 0.05 over in-batch
documents, AdamW, fp32. Rows: the lab without caching, the lab with ``--chunk`` rows per chunk, and
sentence-transformers' cached loss with the same mini-batch size. A row that runs out of memory (or past
``--timeout`` seconds) is reported as such; ``--memory-limit-gib`` caps each row's address space (RLIMIT_AS), so a
row that needs more fails with an allocation error instead of waking the kernel's OOM killer, which could take
any process on the machine. Last line: one JSON object with every row and the ratios (lab cached /
sentence-transformers cached, seconds per step and peak RSS) per batch size. Needs ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from common import load_scifact, machine, print_json, print_table

MODEL, LR = "all-MiniLM-L6-v2", 2e-5


def pairs(n: int) -> tuple[list[str], list[str]]:
    ds = load_scifact(splits=["train"])
    found = [(ds.queries[q], ds.corpus[d].full_text()) for q, docs in ds.qrels["train"].items() for d in docs]
    found = (found * (n // len(found) + 1))[:n]  # repeat SciFact's 919 pairs where a batch needs more
    return [q for q, _ in found], [d for _, d in found]


def lab_step_fn(batch: int, chunk: int | None):
    from retrieval_lab.models.biencoder import BiEncoder
    from retrieval_lab.objectives.infonce import InfoNCE
    from retrieval_lab.training.grad_cache import grad_cache_loss

    encoder = BiEncoder(MODEL, query_max_length=64, doc_max_length=128).train()
    objective = InfoNCE(temperature=0.05, mask_false_negatives=False)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=LR)
    queries, docs = pairs(batch)
    tokens = {"queries": dict(encoder.tokenize_queries(queries)), "docs": dict(encoder.tokenize_docs(docs))}

    def step() -> None:
        optimizer.zero_grad()
        if chunk:
            grad_cache_loss(encoder, objective, tokens, chunk)
        else:
            q, d = encoder.encode_queries(tokens["queries"]), encoder.encode_docs(tokens["docs"])
            objective(q, d, encoder.score).backward()
        optimizer.step()

    return step


def st_step_fn(batch: int, chunk: int):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

    from retrieval_lab.models.backbone import resolve_model_path

    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.max_seq_length = 128
    loss = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=chunk)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    queries, docs = pairs(batch)
    features = [model.tokenize(queries), model.tokenize(docs)]
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        loss(features, None).backward()
        optimizer.step()

    return step


def one(args) -> None:
    """A single row, in this process: prints its JSON figures."""
    torch.manual_seed(0)
    make = st_step_fn if args.row == "st_cached" else lab_step_fn
    step = make(args.batch, args.chunk) if args.row != "lab_plain" else make(args.batch, None)
    times = []
    for i in range(args.steps + 1):  # the first step is not timed
        start = time.perf_counter()
        step()
        if i:
            times.append(time.perf_counter() - start)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(json.dumps({"s_per_step": round(sum(times) / len(times), 2), "peak_rss_gib": round(rss_gib, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,128,512")
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--memory-limit-gib", type=float, default=None, help="each row's address-space cap")
    parser.add_argument("--row", choices=["lab_plain", "lab_cached", "st_cached"])
    parser.add_argument("--batch", type=int)
    args = parser.parse_args()
    if args.row:
        return one(args)
    rows, figures = [], {}
    limit = None if args.memory_limit_gib is None else int(args.memory_limit_gib * 2**30)
    cap = None if limit is None else lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for batch in (int(b) for b in args.batches.split(",")):
        for row in ("lab_plain", "lab_cached", "st_cached"):
            cmd = [sys.executable, __file__, "--row", row, "--batch", str(batch), "--chunk", str(args.chunk),
                   "--steps", str(args.steps)]  # fmt: skip
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap)
                result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                    "failed": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:120]}"}  # fmt: skip
            except subprocess.TimeoutExpired:
                result = {"failed": f"over {args.timeout} s"}
            figures[f"{row}@{batch}"] = result
            rows.append({"batch": batch, "row": row, **{k: result.get(k, "-") for k in ("s_per_step", "peak_rss_gib")},
                         "note": result.get("failed", "")})  # fmt: skip
    print_table(rows)
    ratios = {}
    for batch in (int(b) for b in args.batches.split(",")):
        lab, st = figures[f"lab_cached@{batch}"], figures[f"st_cached@{batch}"]
        if "failed" not in lab and "failed" not in st:
            ratios[batch] = {"s_per_step": round(lab["s_per_step"] / st["s_per_step"], 3),
                             "peak_rss": round(lab["peak_rss_gib"] / st["peak_rss_gib"], 3)}  # fmt: skip
    print_json({"rows": figures, "ratio_lab_over_st_cached": ratios, "chunk": args.chunk,
                "memory_limit_gib": args.memory_limit_gib, "machine": machine()})  # fmt: skip


if __name__ == "__main__":
    main()
