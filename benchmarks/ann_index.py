"""Flat vs HNSW vs IVF-PQ on the largest real corpus here: Wikispeedia's passages (145k) encoded by MiniLM.

    RETRIEVAL_LAB_DATA=../shared/data python benchmarks/ann_index.py [--passages N] [--queries 1000]
        [--precision auto|fp32|int8] [--cache outputs/bench/wikispeedia_vectors]

Queries are SQuAD v1.1 dev questions (a seeded sample), encoded as queries by the same model. Each index is the
lab's ``FaissIndex`` built from a factory string (what ``retriever.index_factory`` takes), searched for the top 10
of every query in one batch. Columns: the search parameter (``retriever.ef_search`` for HNSW,
``retriever.nprobe`` for IVF, ``retriever.refine_k_factor`` for a PQ index re-ranked by 8-bit codes), build
seconds (training included), milliseconds per query, recall of Flat's top 10 (the share of exact top-10 passages
found), and the index's serialized bytes. The passage vectors are saved under ``--cache``
with the settings that made them, so later runs skip the encoding (the slow part: minutes per 10k passages on
two CPU cores). Last line: one JSON object with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import faiss
import numpy as np
import torch
from common import machine, print_json, print_table, timed

from retrieval_lab.data.wiki import load_wikispeedia
from retrieval_lab.index.encode import encode_texts, resolve_precision
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.utils.io import atomic_file, atomic_write_text

# (factory, the search parameter's config name, its values); Flat is exact and has none
INDEXES = [
    ("Flat", None, [None]),
    ("HNSW32", "ef_search", [16, 64, 256]),
    ("IVF1024,Flat", "nprobe", [8, 32]),
    ("IVF1024,PQ48", "nprobe", [8, 32, 128]),
    ("IVF1024,PQ96", "nprobe", [32, 128]),
    ("IVF1024,PQ48,Refine(SQ8)", "refine_k_factor", [1, 4, 16]),  # at the default nprobe (16)
]


def squad_questions(root: Path, n: int, seed: int = 0) -> list[str]:
    data = json.loads((root / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    questions = [qa["question"] for article in data for p in article["paragraphs"] for qa in p["qas"]]
    return random.Random(seed).sample(questions, min(n, len(questions)))


def passage_vectors(encoder: BiEncoder, passages: list[str], args: argparse.Namespace) -> np.ndarray:
    """The passages' vectors, from ``--cache`` where the same settings made them, else encoded and saved."""
    settings = {"model": "all-MiniLM-L6-v2", "passages": len(passages), "max_length": args.max_length,
                "precision": resolve_precision(args.precision, torch.device("cpu"))}  # fmt: skip
    folder = Path(args.cache)
    meta, array = folder / "meta.json", folder / "vectors.npy"
    if meta.is_file() and array.is_file() and json.loads(meta.read_text()) == settings:
        print(f"passage vectors reused from {folder}", flush=True)
        return np.load(array)
    vectors, seconds = timed(encode_texts, encoder, passages, "docs", 64, precision=args.precision,
                             max_length=args.max_length)  # fmt: skip
    print(f"encoded {len(passages)} passages in {seconds:.0f} s ({settings['precision']})", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(array) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors)
    atomic_write_text(meta, json.dumps(settings))
    return vectors


def top10_overlap(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=None, help="the first N passages (default: all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="auto", help="passage encoding precision (index/encode.py)")
    parser.add_argument("--cache", default="outputs/bench/wikispeedia_vectors")
    args = parser.parse_args()
    root = os.environ.get("RETRIEVAL_LAB_DATA")
    if not root:
        sys.exit("Set RETRIEVAL_LAB_DATA to the folder holding wiki/wikispeedia and squad (e.g. ../shared/data).")
    corpus = load_wikispeedia(root)
    passages = [p for article in corpus.articles.values() for p in article.passages][: args.passages]
    ids = [str(i) for i in range(len(passages))]
    encoder = BiEncoder()
    vectors = passage_vectors(encoder, passages, args)
    questions = squad_questions(Path(root), args.queries)
    queries = encode_texts(encoder, questions, "queries", precision="fp32", show_progress=False)

    rows, exact = [], None
    for factory, knob, values in INDEXES:
        index = FaissIndex(vectors.shape[1], factory)
        _, build = timed(index.add, vectors, ids)
        size = len(faiss.serialize_index(index.index))
        for value in values:
            if knob is not None:
                index._configure(**{**index.search_knobs, knob: value})
            (_, found), seconds = timed(index.search, queries, 10)
            exact = found if exact is None else exact
            rows.append({"index": factory, "param": f"{knob}={value}" if knob else "-", "build_s": round(build, 1),
                         "ms_per_query": round(1000 * seconds / len(queries), 3),
                         "recall_of_flat@10": round(top10_overlap(found, exact), 4), "bytes": size})  # fmt: skip
            print(rows[-1], flush=True)
    print_table(rows)
    print(f"machine: {machine()}; faiss threads: {faiss.omp_get_max_threads()}; passages: {len(passages)}; "
          f"queries: {len(queries)}")  # fmt: skip
    print_json({"passages": len(passages), "queries": len(queries), "rows": rows})


if __name__ == "__main__":
    main()
