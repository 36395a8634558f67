"""AdamW's step alone on the default backbone's parameters: the implementations torch offers, side by side.

    python benchmarks/optimizer_step.py [--steps 20] [--warmup 3]

The packaged all-MiniLM-L6-v2 (22.7M parameters, fp32) with random gradients, the lab's two parameter groups
(weight decay 0.01 on matrices, none on biases and LayerNorm), lr 1e-4: ``foreach`` (torch's default on CPU),
``fused`` (one kernel per parameter group; what Hugging Face's Trainer uses by default where available) and the
plain per-parameter loop. Last line: JSON with each row's ms per step and ``fused_speedup`` (foreach / fused).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, print_json, print_table

from retrieval_lab.models.biencoder import BiEncoder


def time_steps(params: list[torch.nn.Parameter], steps: int, warmup: int, **flags) -> float:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4,
                                  weight_decay=0.01, **flags)  # fmt: skip
    for _ in range(warmup):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    params = [p for p in BiEncoder().parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    rows = []
    for name, flags in (("foreach", {"foreach": True}), ("fused", {"fused": True}), ("loop", {"foreach": False})):
        ms = time_steps(params, args.steps, args.warmup, **flags)
        rows.append({"implementation": name, "ms_per_step": round(ms, 2)})
    print_table(rows)
    by = {r["implementation"]: r["ms_per_step"] for r in rows}
    print_json({"machine": machine(), "parameters": sum(p.numel() for p in params), "ms_per_step": by,
                "fused_speedup": round(by["foreach"] / by["fused"], 3)})  # fmt: skip


if __name__ == "__main__":
    main()
