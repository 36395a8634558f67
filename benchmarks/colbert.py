"""End-to-end ColBERT retrieval against exact MaxSim over the whole corpus, on SciFact.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/colbert.py [--docs N] [--queries N] [--model PATH]

The corpus's token vectors are encoded once (``--model``: an exported ColBERT folder, by default the packaged
MiniLM with a fresh seeded projection: both searches run over the same vectors, so the comparison is about
search, not relevance) into the lab's multi-vector index. For every test query, from its token vectors
(encoded once, not timed): end to end (FAISS candidates, the top ``--candidates-per-token`` per query token,
then exact MaxSim over the candidates' fp16 vectors), exact MaxSim over every document's vectors one query at a
time (fp32, ``packed_maxsim``), and exact MaxSim batched (``MultiVectorIndex.iter_exact_scores``: 16 queries
at a time against length-sorted fp32 blocks of documents, ``retriever.mode=exact`` and a ColBERT refresh's
path; the blocks are built in the first pass). Best of ``--repeats`` passes. Last line: one JSON object with
``recall_vs_exact@10`` (share of the exact top 10 that end to end returns), ``speedup`` (exact time /
end-to-end time), ``batched_exact_speedup`` (one-at-a-time exact time / batched exact time), the per-query
latencies and the index size in bytes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import load_scifact, machine, print_json, print_table

from retrieval_lab.index.encode import resolve_precision
from retrieval_lab.index.multi_vector import MultiVectorIndex, encode_token_vectors, top_rows
from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.retrievers.colbert import ColbertRetriever
from retrieval_lab.scoring.maxsim import packed_maxsim

K = 10


def search_all(fn, vectors: list[np.ndarray], repeats: int) -> tuple[list[list[str]], float]:
    """Every query's top-K ids (``fn`` maps all query vectors to them), and the best-of-``repeats`` mean seconds
    per query."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ranked = fn(vectors)
        best = min(best, (time.perf_counter() - start) / len(vectors))
    return ranked, best


def recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True) if b]))


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

    def exact_one_at_a_time(qs: list[np.ndarray]) -> list[list[str]]:
        return [[doc_ids[i] for i in top_rows(packed_maxsim(q, exact_tokens, lengths), K)] for q in qs]

    def exact_batched(qs: list[np.ndarray]) -> list[list[str]]:
        return [[doc_ids[i] for i in top_rows(row, K)] for _, block in index.iter_exact_scores(qs) for row in block]

    def end_to_end(qs: list[np.ndarray]) -> list[list[str]]:
        return [index.search(q, K, args.candidates_per_token)[1] for q in qs]

    exact, exact_s = search_all(exact_one_at_a_time, vectors, args.repeats)
    batched, batched_s = search_all(exact_batched, vectors, args.repeats)
    e2e, e2e_s = search_all(end_to_end, vectors, args.repeats)
    fp32_bytes, e2e_recall = exact_tokens.nbytes + lengths.nbytes, round(recall(e2e, exact), 4)
    print_table([
        {"search": "exact MaxSim, whole corpus, one query at a time (fp32)", "ms_per_query": f"{1e3 * exact_s:.2f}",
         "bytes": fp32_bytes, "recall_vs_exact@10": 1.0},
        {"search": "exact MaxSim, whole corpus, 16 queries at a time (fp32 blocks)",
         "ms_per_query": f"{1e3 * batched_s:.2f}", "bytes": index.exact_nbytes,
         "recall_vs_exact@10": recall(batched, exact)},
        {"search": f"end to end ({index.factory_used}, nprobe {args.nprobe}, k' {args.candidates_per_token})",
         "ms_per_query": f"{1e3 * e2e_s:.2f}", "bytes": index.nbytes, "recall_vs_exact@10": e2e_recall},
    ])  # fmt: skip
    print(f"{len(corpus)} documents, {len(tokens)} token vectors, {len(queries)} queries; "
          f"encoding {encode_s:.1f}s ({resolve_precision(args.precision, torch.device('cpu'))}), index build "
          f"{build_s:.1f}s; machine: {machine()}")  # fmt: skip
    print_json({
        "recall_vs_exact@10": e2e_recall,
        "speedup": round(exact_s / e2e_s, 3),
        "batched_exact_speedup": round(exact_s / batched_s, 3),
        "end_to_end_ms_per_query": round(1e3 * e2e_s, 3),
        "exact_ms_per_query": round(1e3 * exact_s, 3),
        "batched_exact_ms_per_query": round(1e3 * batched_s, 3),
        "index_bytes": index.nbytes,
        "exact_bytes": int(exact_tokens.nbytes + lengths.nbytes),
        "factory": index.factory_used,
        "docs": len(corpus),
        "token_vectors": len(tokens),
        "queries": len(queries),
    })  # fmt: skip


if __name__ == "__main__":
    main()
