"""One ColBERT index refresh's mining on SciFact: exact MaxSim against end-to-end retrieval.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/colbert_mining.py --model CB/export/colbert [--docs N]

Runs ``mine_ann_negatives`` (the refresh's own function) twice over SciFact's train queries and corpus, as a
``model=colbert negatives=ance`` refresh does: ``index_factory=Flat`` (the default: negatives and the
positives' ranks from one exact MaxSim pass over every document, ``MultiVectorIndex.iter_exact_scores``) and
``--factory`` (default ``auto``: FAISS candidates per query token, re-ranked by exact MaxSim, then a separate
exact pass for the ranks). Each run encodes the corpus itself (the same cost in both, printed). Prints each
run's encode / index / mine seconds, and how far the end-to-end negatives agree with the exact ones. Last line:
one JSON object with ``mine_speedup`` (end-to-end mine + index seconds / exact mine + index seconds) and
``negatives_overlap`` (mean share of a query's exact top-k that end to end also mines).
"""

from __future__ import annotations

import argparse

import torch
from common import load_scifact, machine, print_json, print_table

from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.negatives.mining import mine_ann_negatives, table_overlap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="an exported ColBERT folder or any HF encoder")
    parser.add_argument("--docs", type=int, default=None, help="the first N documents (plus every train positive)")
    parser.add_argument("--top-k", type=int, default=10, help="negatives mined per query")
    parser.add_argument("--doc-max-length", type=int, default=128, help="the refresh's document length")
    parser.add_argument("--factory", default="auto", help="the end-to-end run's FAISS factory over token vectors")
    args = parser.parse_args()
    if args.factory == "Flat":
        parser.error("--factory is the end-to-end run's factory; Flat is the exact run, which always runs")

    ds = load_scifact(splits=["train"])
    qrels = ds.qrels["train"]
    positives = {q: set(docs) for q, docs in qrels.items()}
    keep = set(list(ds.corpus)[: args.docs]) | {d for docs in positives.values() for d in docs}
    corpus = {d: doc for d, doc in ds.corpus.items() if d in keep}
    queries = {q: ds.queries[q] for q in qrels}
    torch.manual_seed(0)
    encoder = ColBERT(args.model).eval()
    mined, rows = {}, []
    for factory in ("Flat", args.factory):
        run = mine_ann_negatives(encoder, corpus, queries, positives, args.top_k, index_factory=factory,
                                 doc_max_length=args.doc_max_length)  # fmt: skip
        mined[factory] = run
        rows.append({"index_factory": factory, **{f"{k}_s": round(v, 2) for k, v in run.seconds.items()},
                     "positive_mean_rank": round(run.positive_mean_rank, 3)})  # fmt: skip
    print_table(rows)
    exact, e2e = mined["Flat"], mined[args.factory]
    overlap = table_overlap(exact.negatives, e2e.negatives)
    cost = {name: m.seconds["index"] + m.seconds["mine"] for name, m in mined.items()}
    print(f"{len(corpus)} documents, {len(queries)} queries, top {args.top_k}; machine: {machine()}")
    print_json({
        "mine_speedup": round(cost[args.factory] / cost["Flat"], 3),
        "exact_index_mine_s": round(cost["Flat"], 2),
        "end_to_end_index_mine_s": round(cost[args.factory], 2),
        "encode_s": round(exact.seconds["encode"], 2),
        "negatives_overlap": round(overlap, 4),
        "same_positive_ranks": exact.positive_ranks == e2e.positive_ranks,
        "docs": len(corpus),
        "queries": len(queries),
    })  # fmt: skip


if __name__ == "__main__":
    main()
