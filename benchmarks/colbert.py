"""End-to-end ColBERT retrieval against exact MaxSim over the whole corpus, on SciFact.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/colbert.py [--docs N] [--queries N] [--model PATH]

The corpus's token vectors are encoded once (``--model``: an exported ColBERT folder, by default the packaged
MiniLM with a fresh seeded projection: both searches run over the same vectors, so the comparison is about
search, not relevance) into the lab's multi-vector index. For every test query, from its token vectors
(encoded once, not timed): end to end (FAISS candidates, the top ``--candidates-per-token`` per query token,
then exact MaxSim over the candidates' fp16 vectors) and exact MaxSim over every document's vectors (fp32,
the fastest exact path). Best of ``--repeats`` passes. Last line: one JSON object with ``recall_vs_exact@10``
(share of the exact top 10 that end to end returns), ``speedup`` (exact time / end-to-end time), the
per-query latencies and the index size in bytes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import load_scifact, machine, print_json, print_table

from retrieval_lab.index.encode import resolve_precision
from retrieval_lab.index.multi_vector import MultiVectorIndex, encode_token_vectors
from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.retrievers.colbert import ColbertRetriever
from retrieval_lab.scoring.maxsim import packed_maxsim

K = 10


def search_all(fn, vectors: list[np.ndarray], repeats: int) -> tuple[list[list[str]], float]:
    """Every query's top-K ids, and the best-of-``repeats`` mean seconds per query."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ranked = [fn(q) for q in vectors]
        best = min(best, (time.perf_counter() - start) / len(vectors))
    return ranked, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="the first N documents of the corpus")
    parser.add_argument("--queries", type=int, default=None, help="the first N test queries")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="an exported ColBERT folder or any HF encoder")
    parser.add_argument("--factory", default="auto", help="FAISS factory over token vectors")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--candidates-per-token", type=int, default=64)
    parser.add_argument("--doc-max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ds = load_scifact()
    corpus = dict(list(ds.corpus.items())[: args.docs])
    queries = dict(list(ds.split_queries("test").items())[: args.queries])
    torch.manual_seed(0)
    encoder = ColBERT(args.model, doc_max_length=args.doc_max_length).eval()
    start = time.perf_counter()
    tokens, lengths = encode_token_vectors(encoder, [d.full_text() for d in corpus.values()], "docs",
                                           precision=args.precision, show_progress=False)  # fmt: skip
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    index = MultiVectorIndex(tokens.shape[1], args.factory, args.nprobe)
    index.add(tokens, lengths, list(corpus))
    build_s = time.perf_counter() - start
    retriever = ColbertRetriever(encoder, mode="end_to_end", precision=args.precision, show_progress=False)
    vectors = retriever.query_vectors(list(queries.values()))

    exact_tokens = tokens.astype(np.float32)  # exact search reads fp32: no per-query conversion
    doc_ids = list(corpus)

    def exact_top(q: np.ndarray) -> list[str]:
        scores = packed_maxsim(q, exact_tokens, lengths)  # (N,)
        top = np.argpartition(-scores, min(K, len(scores) - 1))[:K]
        return [doc_ids[i] for i in top[np.argsort(-scores[top], kind="stable")]]

    exact, exact_s = search_all(exact_top, vectors, args.repeats)
    e2e, e2e_s = search_all(lambda q: index.search(q, K, args.candidates_per_token)[1], vectors, args.repeats)
    recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(e2e, exact, strict=True) if b]))
    print_table([
        {"search": "exact MaxSim, whole corpus (fp32)", "ms_per_query": f"{1e3 * exact_s:.2f}",
         "bytes": exact_tokens.nbytes + lengths.nbytes, "recall_vs_exact@10": 1.0},
        {"search": f"end to end ({index.factory_used}, nprobe {args.nprobe}, k' {args.candidates_per_token})",
         "ms_per_query": f"{1e3 * e2e_s:.2f}", "bytes": index.nbytes, "recall_vs_exact@10": round(recall, 4)},
    ])  # fmt: skip
    print(f"{len(corpus)} documents, {len(tokens)} token vectors, {len(queries)} queries; "
          f"encoding {encode_s:.1f}s ({resolve_precision(args.precision, torch.device('cpu'))}), index build "
          f"{build_s:.1f}s; machine: {machine()}")  # fmt: skip
    print_json({
        "recall_vs_exact@10": round(recall, 4),
        "speedup": round(exact_s / e2e_s, 3),
        "end_to_end_ms_per_query": round(1e3 * e2e_s, 3),
        "exact_ms_per_query": round(1e3 * exact_s, 3),
        "index_bytes": index.nbytes,
        "exact_bytes": int(exact_tokens.nbytes + lengths.nbytes),
        "factory": index.factory_used,
        "docs": len(corpus),
        "token_vectors": len(tokens),
        "queries": len(queries),
    })  # fmt: skip


if __name__ == "__main__":
    main()
