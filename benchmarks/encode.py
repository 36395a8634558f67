"""The lab's corpus encoding against sentence-transformers ``encode()`` on SciFact.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/encode.py [--docs N] [--batch-size 64]

Same model (the packaged all-MiniLM-L6-v2), texts (title + text), max length 256 and batch size for every
path. Rows: the lab with its default precision (``auto``: bf16 where the CPU or GPU has native bf16, fp32
elsewhere), the lab forced to fp32, to bf16 and to int8 (dynamic quantization of the linear layers, opt-in:
``retriever.precision=int8``), sentence-transformers in fp32 and under ``torch.autocast("cpu", torch.bfloat16)``.
Each row's nDCG@10 comes from its own document vectors (queries encoded by the lab in fp32 for all rows). Every
path runs in a fresh process and first encodes two batches untimed. ``--docs N`` times a seeded subset of N
documents that keeps every test positive (on CPUs without native bf16 the bf16 rows are very slow); nDCG@10 is then
over that subset.
Last line: one JSON object with ``lab_docs_per_s``, ``st_fp32_docs_per_s``, ``st_bf16_docs_per_s``, ``ratio``
(lab / st_fp32), ``ratio_bf16`` (lab / st_bf16), ``ratio_best_st`` and ``int8_ratio_best_st`` (the lab's default
and its int8 path over the faster sentence-transformers row; the goal is 1.3 with nDCG@10 within 0.005) and each
row's nDCG@10. sentence-transformers' ONNX backend is not a row: optimum (which it needs) does not import beside
transformers 5.x.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from common import in_fresh_process, load_scifact, machine, print_json, print_table, timed
from sentence_transformers import SentenceTransformer

from retrieval_lab.eval.metrics import evaluate_run
from retrieval_lab.index.encode import encode_texts, resolve_precision
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.models.backbone import resolve_model_path
from retrieval_lab.models.biencoder import BiEncoder

MAX_LENGTH = 256


def pick_docs(ds, n: int | None, seed: int = 0) -> dict:
    if n is None or n >= len(ds.corpus):
        return ds.corpus
    positives = {d for docs in ds.qrels["test"].values() for d in docs}
    others = [d for d in ds.corpus if d not in positives]
    keep = positives | set(random.Random(seed).sample(others, max(0, n - len(positives))))
    return {d: doc for d, doc in ds.corpus.items() if d in keep}


def ndcg_of(doc_vectors, doc_ids, query_vectors, qids, qrels) -> float:
    index = FaissIndex(doc_vectors.shape[1])
    index.add(doc_vectors, doc_ids)
    scores, ids = index.search(query_vectors, 100)
    run = {q: dict(zip(row, map(float, s), strict=False)) for q, row, s in zip(qids, ids, scores, strict=True)}
    return evaluate_run(qrels, run, ["ndcg@10"])["ndcg@10"]


def encode_row(
    library: str, precision: str, texts: list[str], batch_size: int, device: str
) -> tuple[np.ndarray, float]:
    """One row (``library`` "lab" at an ``encode_texts`` precision, or "st" at "fp32" / "bf16-autocast"), in a
    process of its own (``in_fresh_process``): no row inherits another's caches (cuDNN's per-shape graphs, cuBLAS
    heuristics, the CUDA context), which made whichever row ran first look slow. Two batches are encoded untimed
    first (model load, first kernels), then every text, timed."""
    if library == "lab":
        lab = BiEncoder(doc_max_length=MAX_LENGTH, query_max_length=MAX_LENGTH).to(device)

        def encode(batch):
            return encode_texts(lab, batch, "docs", batch_size, precision=precision, show_progress=False,
                                device=device)  # fmt: skip
    else:
        st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device=device)
        st.max_seq_length = MAX_LENGTH
        autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")

        def encode(batch):
            with autocast:
                return st.encode(batch, batch_size=batch_size, convert_to_numpy=True)

    encode(texts[: 2 * batch_size])
    return timed(encode, texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="time a subset of this many documents")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    ds = load_scifact()
    corpus = pick_docs(ds, args.docs)
    doc_ids, texts = list(corpus), [d.full_text() for d in corpus.values()]
    queries = ds.split_queries("test")
    qrels = {q: {d: r for d, r in docs.items() if d in corpus} for q, docs in ds.qrels["test"].items()}

    lab = BiEncoder(doc_max_length=MAX_LENGTH, query_max_length=MAX_LENGTH)
    query_vectors = encode_texts(lab, list(queries.values()), "queries", precision="fp32", show_progress=False)
    default = resolve_precision("auto", device)
    paths = {  # row name -> (library, precision)
        f"lab (auto = {default})": ("lab", "auto"),
        "lab fp32": ("lab", "fp32"),
        "lab bf16": ("lab", "bf16"),
        **({"lab int8": ("lab", "int8")} if args.device == "cpu" else {}),  # int8 is CPU-only
        "st fp32": ("st", "fp32"),
        "st bf16 autocast": ("st", "bf16-autocast"),
    }
    rows, rate, ndcg = [], {}, {}
    for name, (library, precision) in paths.items():
        vectors, seconds = in_fresh_process(encode_row, library, precision, texts, args.batch_size, args.device)
        rate[name] = len(texts) / seconds
        ndcg[name] = ndcg_of(vectors, doc_ids, query_vectors, list(queries), qrels)
        rows.append(
            {
                "path": name,
                "docs": len(texts),
                "seconds": f"{seconds:.1f}",
                "docs_per_s": f"{rate[name]:.1f}",
                "ndcg@10": ndcg[name],
            }
        )
        print(rows[-1], flush=True)
    print_table(rows)
    print(f"machine: {machine()}")
    lab_key = f"lab (auto = {default})"
    best_st = max(rate["st fp32"], rate["st bf16 autocast"])
    print_json(
        {
            "docs": len(texts),
            "device": args.device,
            "lab_precision": default,
            "lab_docs_per_s": round(rate[lab_key], 2),
            "lab_fp32_docs_per_s": round(rate["lab fp32"], 2),
            "lab_bf16_docs_per_s": round(rate["lab bf16"], 2),
            "st_fp32_docs_per_s": round(rate["st fp32"], 2),
            "st_bf16_docs_per_s": round(rate["st bf16 autocast"], 2),
            "ratio": round(rate[lab_key] / rate["st fp32"], 3),
            "ratio_bf16": round(rate[lab_key] / rate["st bf16 autocast"], 3),
            "ratio_best_st": round(rate[lab_key] / best_st, 3),
            **(
                {
                    "lab_int8_docs_per_s": round(rate["lab int8"], 2),
                    "int8_ratio_best_st": round(rate["lab int8"] / best_st, 3),
                    "lab_int8_ndcg@10": ndcg["lab int8"],
                }
                if "lab int8" in rate
                else {}
            ),
            "lab_fp32_ndcg@10": ndcg["lab fp32"],
            "lab_ndcg@10": ndcg[lab_key],
            "lab_bf16_ndcg@10": ndcg["lab bf16"],
            "st_fp32_ndcg@10": ndcg["st fp32"],
            "st_bf16_ndcg@10": ndcg["st bf16 autocast"],
        }
    )


if __name__ == "__main__":
    main()
