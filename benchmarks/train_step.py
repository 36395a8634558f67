"""Training steps per second: the lab's RetrievalModule against sentence-transformers' trainer.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/train_step.py [--steps 6] [--batch-size 32]

Same model (the packaged all-MiniLM-L6-v2), the same SciFact (query, positive) pairs in the same order, batch size,
max length (256 for queries and documents) and in-batch negatives: the lab's InfoNCE at temperature 0.05 is
sentence-transformers' MultipleNegativesRankingLoss at scale 20. Both run fused AdamW at a constant lr. The first
``--warmup`` steps are not timed. ``--precisions`` lists the rows (fp32, bf16-mixed); each row trains in a fresh
process (no shared kernel caches). bf16-mixed is skipped, saying so, where the CPU has no native bf16 (there it is
hundreds of times slower) unless ``--force-bf16``. Last line: one JSON object with ``ratio`` (lab / sentence-
transformers steps per second, fp32) and the per-precision figures. Needs ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import pytorch_lightning as pl
import torch
from common import in_fresh_process, load_scifact, machine, print_json, print_table
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.losses import MultipleNegativesRankingLoss
from torch.utils.data import DataLoader, SequentialSampler
from transformers import TrainerCallback

from retrieval_lab.index.encode import has_fast_bf16
from retrieval_lab.models.backbone import resolve_model_path
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.training.data import TrainingCollator
from retrieval_lab.training.module import RetrievalModule

try:
    from sentence_transformers.base.sampler import DefaultBatchSampler
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.sampler import DefaultBatchSampler

MAX_LENGTH, LR, TEMPERATURE = 256, 2e-5, 0.05


def scifact_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` seeded (query, positive document) pairs from SciFact train."""
    ds = load_scifact(splits=["train"])
    pairs = [(ds.queries[q], ds.corpus[d].full_text()) for q, docs in ds.qrels["train"].items() for d in docs]
    random.Random(seed).shuffle(pairs)
    if len(pairs) < n:
        raise SystemExit(f"need {n} pairs, SciFact train has {len(pairs)}")
    return pairs[:n]


class StepTimes:
    """Wall time of every optimizer step, recorded by either framework's callback hooks. On a GPU both ends wait
    for the queued kernels (CUDA runs them asynchronously): a trainer that never reads a value back would
    otherwise be timed on its kernel launches alone."""

    def __init__(self, device: str = "cpu") -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def begin(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def end(self) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


class LightningTimer(pl.Callback):
    def __init__(self, times: StepTimes) -> None:
        self.t = times

    def on_train_batch_start(self, *args) -> None:
        self.t.begin()

    def on_train_batch_end(self, *args) -> None:
        self.t.end()


class HFTimer(TrainerCallback):
    def __init__(self, times: StepTimes) -> None:
        self.t = times

    def on_step_begin(self, *args, **kwargs) -> None:
        self.t.begin()

    def on_step_end(self, *args, **kwargs) -> None:
        self.t.end()


def run_lab(pairs, batch_size: int, steps: int, precision: str, device: str = "cpu") -> list[float]:
    torch.manual_seed(0)
    encoder = BiEncoder(query_max_length=MAX_LENGTH, doc_max_length=MAX_LENGTH)
    # fused, as the lab trains by default (conf/module/retrieval.yaml: module.optimizer.fused) and as
    # sentence-transformers' trainer steps (transformers' default optim, adamw_torch_fused)
    optimizer = lambda params: torch.optim.AdamW(params, lr=LR, fused=True)  # noqa: E731
    # unmasked, as sentence-transformers' MultipleNegativesRankingLoss is: the same loss on both sides
    module = RetrievalModule(encoder, InfoNCE(TEMPERATURE, mask_false_negatives=False), optimizer, warmup_ratio=0.0)
    items = [{"query": q, "positive": d, "negatives": []} for q, d in pairs]
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=TrainingCollator(encoder))
    times = StepTimes(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[LightningTimer(times)],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return times.times


class InOrderBatchSampler(DefaultBatchSampler):
    """sentence-transformers' batches in dataset order, so both trainers see the very same batches (its default
    shuffles, and batches of other lengths would cost other times)."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, **kwargs) -> None:
        super().__init__(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last, **kwargs)


def run_st(pairs, batch_size: int, steps: int, bf16: bool, out_dir: str, device: str = "cpu") -> list[float]:
    torch.manual_seed(0)
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device=device)
    model.max_seq_length = MAX_LENGTH
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, bf16=bf16, use_cpu=device == "cpu", report_to="none",
        save_strategy="no", logging_steps=10_000, dataloader_drop_last=True, seed=0,
        batch_sampler=InOrderBatchSampler,
    )  # fmt: skip
    times = StepTimes(device)
    loss = MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=loss, callbacks=[HFTimer(times)]
    )
    trainer.train()
    return times.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per row, after --warmup")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precisions", default="fp32,bf16-mixed")
    parser.add_argument("--force-bf16", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    total = args.steps + args.warmup
    pairs = scifact_pairs(total * args.batch_size)
    rows, result = [], {"batch_size": args.batch_size, "max_length": MAX_LENGTH, "timed_steps": args.steps,
                        "device": args.device}  # fmt: skip
    for precision in args.precisions.split(","):
        bf16 = precision == "bf16-mixed"
        if bf16 and not (has_fast_bf16(torch.device(args.device)) or args.force_bf16):
            print(f"skipping {precision}: no native bf16 on this {args.device}; --force-bf16 runs it")
            continue
        lab_precision = "bf16-mixed" if bf16 else "32-true"
        lab = in_fresh_process(run_lab, pairs, args.batch_size, total, lab_precision, args.device)[args.warmup :]
        with tempfile.TemporaryDirectory() as out_dir:
            st = in_fresh_process(run_st, pairs, args.batch_size, total, bf16, out_dir, args.device)[args.warmup :]
        lab_sps, st_sps = len(lab) / sum(lab), len(st) / sum(st)
        tag = "bf16" if bf16 else "fp32"
        result.update({f"lab_{tag}_steps_per_s": round(lab_sps, 4), f"st_{tag}_steps_per_s": round(st_sps, 4),
                       f"ratio_{tag}": round(lab_sps / st_sps, 3)})  # fmt: skip
        for name, sps in (("lab", lab_sps), ("sentence-transformers", st_sps)):
            rows.append({"trainer": name, "precision": precision, "steps_per_s": f"{sps:.4f}",
                         "s_per_step": f"{1 / sps:.2f}"})  # fmt: skip
    print_table(rows)
    print(f"machine: {machine()}")
    result["ratio"] = result.get("ratio_fp32")
    print_json(result)


if __name__ == "__main__":
    main()
