"""ColBERT retrieval: re-rank a first stage's top-k (BM25) by exact MaxSim, end to end (FAISS candidates over
token vectors, then exact MaxSim over the candidates' stored fp16 vectors), or exact MaxSim over every document
(small corpora: the dev pool during training)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run
from retrieval_lab.index.encode import resolve_precision
from retrieval_lab.index.multi_vector import MultiVectorIndex, encode_token_vectors, top_rows
from retrieval_lab.models.base import Encoder
from retrieval_lab.retrievers.base import Retriever

log = logging.getLogger(__name__)
MODES = ("rerank", "end_to_end", "exact")


class ColbertRetriever(Retriever):
    """``timings`` holds the corpus encoding, index build and per-query search seconds; ``index_bytes`` the size
    of what a search reads (the fp16 token store, plus the FAISS index end to end)."""

    def __init__(
        self,
        encoder: Encoder,
        mode: str = "rerank",
        first_stage: Retriever | None = None,
        rerank_depth: int = 1000,
        index_factory: str = "auto",
        nprobe: int = 32,
        candidates_per_token: int = 64,
        batch_size: int = 32,
        query_batch_size: int = 128,
        precision: str = "auto",
        device: str = "cpu",
        show_progress: bool = True,
        doc_max_length: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"retriever.mode must be one of {MODES}, got {mode!r}")
        if mode == "rerank" and first_stage is None:
            raise ValueError("retriever.mode=rerank needs retriever.first_stage (e.g. BM25)")
        if rerank_depth < 1 or candidates_per_token < 1:
            raise ValueError("retriever.rerank_depth and retriever.candidates_per_token must be >= 1")
        if doc_max_length is not None and doc_max_length < 2:
            raise ValueError(f"retriever.doc_max_length must be at least 2 or null, got {doc_max_length}")
        resolve_precision(precision, torch.device(device))  # refuse a bad value before any encoding
        self.encoder = encoder.to(device)
        self.mode, self.first_stage, self.rerank_depth = mode, first_stage, rerank_depth
        self.index_factory, self.nprobe, self.candidates_per_token = index_factory, nprobe, candidates_per_token
        self.batch_size, self.query_batch_size = batch_size, query_batch_size
        self.encode_args = {"precision": precision, "show_progress": show_progress, "device": device}
        self.doc_max_length = min(doc_max_length or encoder.doc_max_length, encoder.doc_max_length)
        self.store: MultiVectorIndex | None = None
        self.timings: dict[str, float] = {}

    @property
    def index_bytes(self) -> int:
        return self.store.nbytes if self.store is not None else 0

    def index(self, corpus: dict[str, Document]) -> None:
        if not getattr(self.encoder, "multi_vector", False):
            raise ValueError(f"retriever=colbert needs token vectors: use model=colbert, not {type(self.encoder)}")
        start = time.perf_counter()
        texts = [doc.full_text() for doc in corpus.values()]
        tokens, lengths = encode_token_vectors(
            self.encoder, texts, "docs", self.batch_size, max_length=self.doc_max_length, **self.encode_args
        )
        encoded = time.perf_counter()
        self.store = MultiVectorIndex(tokens.shape[1], self.index_factory, self.nprobe, self.mode == "end_to_end")
        self.store.add(tokens, lengths, list(corpus))
        if self.mode == "rerank":
            self.first_stage.index(corpus)
        self.timings |= {"encode_corpus_s": encoded - start, "build_index_s": time.perf_counter() - encoded}
        log.info("ColBERT index: %d documents, %d token vectors, %d bytes (%s)", len(texts), len(tokens),
                 self.index_bytes, self.store.factory_used or "store only")  # fmt: skip

    def query_vectors(self, texts: list[str]) -> list[np.ndarray]:
        """Each query's token vectors ``(Lq, dim)`` as float32."""
        args = self.encode_args
        tokens, lengths = encode_token_vectors(self.encoder, texts, "queries", self.query_batch_size, **args)
        return np.split(tokens.astype(np.float32), np.cumsum(lengths)[:-1])

    def search(self, queries: dict[str, str], k: int) -> Run:
        if self.store is None:
            raise RuntimeError("ColbertRetriever.search called before index()")
        vectors = self.query_vectors(list(queries.values()))
        if self.mode == "rerank":
            first = self.first_stage.search(queries, self.rerank_depth)
        row = {did: i for i, did in enumerate(self.store.ids)}
        start = time.perf_counter()
        run: Run = {}
        if self.mode == "exact":  # many queries at a time against the whole corpus
            qids = list(queries)
            for positions, block in self.store.iter_exact_scores(vectors):
                for i, scores in zip(positions, block, strict=True):
                    run[qids[i]] = {self.store.ids[r]: float(scores[r]) for r in top_rows(scores, k)}
        else:
            for qid, q in zip(queries, vectors, strict=True):
                if self.mode == "rerank":
                    scores, rows = self.store.rerank(q, np.array([row[d] for d in first[qid]], dtype=np.int64), k)
                    run[qid] = {self.store.ids[r]: float(s) for r, s in zip(rows, scores, strict=True)}
                else:
                    scores, ids = self.store.search(q, k, self.candidates_per_token)
                    run[qid] = {did: float(s) for did, s in zip(ids, scores, strict=True)}
        self.timings["search_s_per_query"] = (time.perf_counter() - start) / max(1, len(queries))
        return run
