"""The lab's BM25 path against calling bm25s directly, on SciFact: same settings, time and nDCG@10.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/bm25.py [--repeats 5]

Both sides tokenize (stopwords, Snowball stemmer), index the corpus and retrieve the top 100 for the test
queries; the best of ``--repeats`` wall times counts. Last line: one JSON object with ``ratio``
(lab time / bm25s time) and both nDCG@10.
"""

from __future__ import annotations

import argparse

import bm25s
import Stemmer
from common import load_scifact, machine, print_json, print_table, timed

from retrieval_lab.eval.metrics import evaluate_run
from retrieval_lab.retrievers.bm25 import BM25Retriever

K = 100


def direct_bm25s(doc_ids: list[str], doc_texts: list[str], queries: dict[str, str]) -> dict:
    stemmer = Stemmer.Stemmer("english")
    model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    model.index(bm25s.tokenize(doc_texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    q_tokens = bm25s.tokenize(list(queries.values()), stopwords="en", stemmer=stemmer, show_progress=False)
    rows, scores = model.retrieve(q_tokens, k=K, show_progress=False)
    return {
        qid: {doc_ids[r]: float(s) for r, s in zip(row, score, strict=True) if s > 0}
        for qid, row, score in zip(queries, rows, scores, strict=True)
    }


def lab_bm25(corpus, queries: dict[str, str]) -> dict:
    return BM25Retriever(show_progress=False).retrieve(corpus, queries, K)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ds = load_scifact()
    queries = ds.split_queries("test")
    doc_ids = list(ds.corpus)
    doc_texts = [d.full_text() for d in ds.corpus.values()]
    times = {"lab": [], "bm25s": []}
    runs = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides
        runs["bm25s"], t = timed(direct_bm25s, doc_ids, doc_texts, queries)
        times["bm25s"].append(t)
        runs["lab"], t = timed(lab_bm25, ds.corpus, queries)
        times["lab"].append(t)
    ndcg = {name: evaluate_run(ds.qrels["test"], run, ["ndcg@10"])["ndcg@10"] for name, run in runs.items()}
    best = {name: min(ts) for name, ts in times.items()}
    print_table(
        [
            {
                "path": name,
                "best_s": f"{best[name]:.3f}",
                "median_s": f"{sorted(ts)[len(ts) // 2]:.3f}",
                "ndcg@10": ndcg[name],
            }
            for name, ts in times.items()
        ]
    )
    print(f"machine: {machine()}")
    print_json(
        {
            "ratio": round(best["lab"] / best["bm25s"], 4),
            "lab_s": round(best["lab"], 4),
            "bm25s_s": round(best["bm25s"], 4),
            "lab_ndcg@10": ndcg["lab"],
            "bm25s_ndcg@10": ndcg["bm25s"],
            "ndcg_equal": ndcg["lab"] == ndcg["bm25s"],
        }
    )


if __name__ == "__main__":
    main()
