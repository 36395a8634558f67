"""RetroMAE pre-training throughput (tokens/s) against a plain Hugging Face MLM step on the same backbone and batch.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/retromae.py [--steps 5] [--batch-size 16] [--max-length 128]

Same backbone (the packaged all-MiniLM-L6-v2 weights), the same SciFact abstracts cut to ``--max-length`` tokens,
AdamW at a constant lr, fp32. Rows: ``BertForMaskedLM`` with transformers' whole-word-masking collator (v5:
``DataCollatorForLanguageModeling(whole_word_mask=True)``) at the
encoder's ratio (0.3; the step a user would write for MLM pre-training); the lab's RetroMAE step (encoder MLM +
the one-layer decoder, which predicts every token) with enhanced and with plain decoding. Masking runs outside the
timed region in every row. The first ``--warmup`` steps are not timed. Last line: one JSON object with ``ratio``
(lab enhanced / Hugging Face MLM, tokens per second) and each row's figures.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings

import torch
from common import load_scifact, machine, print_json, print_table
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

from retrieval_lab.models.backbone import resolve_model_path
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.pretrain.retromae import RetroMAEHead, RetroMAEMasker, collate_retromae

LR, MODEL = 1e-4, "all-MiniLM-L6-v2"


def passages(n: int, seed: int = 0) -> list[str]:
    docs = [d.full_text() for d in load_scifact(splits=["test"]).corpus.values()]
    random.Random(seed).shuffle(docs)
    return docs[:n]


def time_steps(step, batches: list, warmup: int) -> list[float]:
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        step(batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def hf_mlm(texts: list[list[str]], max_length: int, ratio: float, warmup: int) -> tuple[list[float], int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sentence-transformers checkpoint has no MLM head: initialised fresh
        model = AutoModelForMaskedLM.from_pretrained(resolve_model_path(MODEL))
    encoder = BiEncoder(MODEL, doc_max_length=max_length)
    collator = DataCollatorForLanguageModeling(encoder.tokenizer, whole_word_mask=True, mlm_probability=ratio, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    batches, tokens = [], 0
    for chunk in texts:
        enc = encoder.tokenizer(chunk, max_length=max_length, truncation=True, padding="longest",
                                return_offsets_mapping=True)  # fmt: skip
        rows = [
            {"input_ids": i, "offset_mapping": o} for i, o in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]
        batch = collator(rows)
        batch["attention_mask"] = torch.tensor(enc["attention_mask"])
        batches.append(batch)
        tokens += int(batch["attention_mask"].sum())  # real tokens, padding aside

    def step(batch: dict) -> None:
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    return time_steps(step, batches, warmup), tokens // len(texts)


def lab_retromae(texts: list[list[str]], max_length: int, enhanced: bool, warmup: int) -> tuple[list[float], int]:
    encoder = BiEncoder(MODEL, pooling="cls", doc_max_length=max_length)
    head = RetroMAEHead(encoder.doc_tower, enhanced_decoding=enhanced)
    masker = RetroMAEMasker(encoder, max_length, 0.3, 0.5, enhanced)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=LR)
    rng = random.Random(0)
    batches = [collate_retromae([masker(t, rng) for t in chunk], encoder.pad_token_id) for chunk in texts]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def step(batch: dict) -> None:
        loss = torch.stack(head(batch)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    encoder.train()
    return time_steps(step, batches, warmup), tokens // len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.steps + args.warmup
    docs = passages(n * args.batch_size)
    texts = [docs[i * args.batch_size : (i + 1) * args.batch_size] for i in range(n)]
    rows, figures = [], {}
    runs = {
        "hf_mlm_wwm_0.3": lambda: hf_mlm(texts, args.max_length, 0.3, args.warmup),
        "lab_retromae_enhanced": lambda: lab_retromae(texts, args.max_length, True, args.warmup),
        "lab_retromae_plain": lambda: lab_retromae(texts, args.max_length, False, args.warmup),
    }
    for name, run in runs.items():
        times, tokens_per_batch = run()
        seconds = sum(times) / len(times)
        figures[name] = {"s_per_step": round(seconds, 3), "tokens_per_s": round(tokens_per_batch / seconds, 1)}
        rows.append({"row": name, "s/step": f"{seconds:.3f}", "tokens/s": f"{tokens_per_batch / seconds:.0f}",
                     "tokens/batch": tokens_per_batch})  # fmt: skip
    print_table(rows)
    ratio = figures["lab_retromae_enhanced"]["tokens_per_s"] / figures["hf_mlm_wwm_0.3"]["tokens_per_s"]
    print_json({"ratio": round(ratio, 3), "rows": figures, "batch_size": args.batch_size,
                "max_length": args.max_length, "steps": args.steps, "machine": machine()})  # fmt: skip


if __name__ == "__main__":
    main()
