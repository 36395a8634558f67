"""Dense retrieval: the one encoding path into a FAISS index, then top-k inner-product search."""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run
from retrieval_lab.index.embedding_cache import EmbeddingCache
from retrieval_lab.index.encode import encode_texts, from_rank_0, gather_rows, resolve_precision
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.models.base import Encoder
from retrieval_lab.retrievers.base import Retriever

log = logging.getLogger(__name__)


_SHARDING = {"active": False}  # set by sharded_encoding(): every rank is calling index() together


@contextlib.contextmanager
def sharded_encoding():
    """Within it, retrievers with ``shard_across_ranks`` split corpus encoding across the DDP ranks. Every rank
    must enter it and make the same ``index()`` calls (a retriever used on rank 0 alone, as the dev evaluation's,
    never shards: it would wait for ranks that are not encoding)."""
    before, _SHARDING["active"] = _SHARDING["active"], True
    try:
        yield
    finally:
        _SHARDING["active"] = before


def ranks() -> tuple[int, int]:
    """(rank, world size) of the initialised process group inside ``sharded_encoding``; else (0, 1)."""
    if _SHARDING["active"] and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DenseRetriever(Retriever):
    def __init__(
        self,
        encoder: Encoder,
        index_factory: str = "Flat",
        nprobe: int = 16,
        ef_search: int = 128,
        refine_k_factor: int = 4,
        batch_size: int = 64,
        query_batch_size: int = 256,
        precision: str = "auto",
        device: str = "cpu",
        show_progress: bool = True,
        cache_dir: str | None = None,
        shard_across_ranks: bool = False,
    ) -> None:
        self.encoder = encoder.to(device)
        self.shard_across_ranks = shard_across_ranks
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None
        resolve_precision(precision, torch.device(device))  # refuse a bad value before any encoding
        self.index_factory, self.index_args = index_factory, {"nprobe": nprobe, "ef_search": ef_search,
                                                   "refine_k_factor": refine_k_factor}  # fmt: skip
        self.encode_args = {"precision": precision, "show_progress": show_progress, "device": device}
        self.batch_size, self.query_batch_size = batch_size, query_batch_size
        self.faiss: FaissIndex | None = None
        self.timings: dict[str, float] = {}
        # Build an empty index now so a bad factory string fails before any encoding.
        FaissIndex(self._probe_dim(), index_factory, **self.index_args)

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            batch = self.encoder.tokenize_queries(["probe"])
            batch = {k: v.to(self.encode_args["device"]) for k, v in batch.items()}
            return int(self.encoder.encode_queries(batch).shape[-1])

    def index(self, corpus: dict[str, Document]) -> None:
        """Encode ``corpus`` and index it. With ``shard_across_ranks`` inside ``sharded_encoding()`` (DDP, every
        rank calling this with the same corpus) each rank encodes every world-th document, rank 0 gathers the
        vectors and alone holds the index (the other ranks return without one)."""
        start = time.perf_counter()
        texts = [doc.full_text() for doc in corpus.values()]
        if hasattr(self.encoder, "use_corpus"):  # CDE: a seeded sample of this corpus is the context
            self.encoder.use_corpus(texts, self.batch_size)
        vectors = self._encode_corpus(list(corpus), texts)
        self.timings["encode_corpus_s"] = time.perf_counter() - start
        if vectors is None:  # a rank other than 0 under sharded encoding
            self.faiss = None
            return
        self.faiss = FaissIndex(vectors.shape[1], self.index_factory, **self.index_args)
        self.faiss.add(vectors, list(corpus))
        log.info("Encoded %d documents in %.1fs", len(texts), self.timings["encode_corpus_s"])

    def _encode_corpus(self, ids: list[str], texts: list[str]) -> np.ndarray | None:
        """The corpus vectors: from the embedding cache where the fingerprint matches, else encoded (and saved);
        sharded across DDP ranks where there are several (None on ranks other than 0)."""
        rank, world = ranks() if self.shard_across_ranks else (0, 1)
        device = torch.device(self.encode_args["device"])
        precision = from_rank_0(resolve_precision(self.encode_args["precision"], device), world)
        settings = {"precision": precision, "side": "docs"}
        key = None
        if self.cache is not None:  # rank 0 alone reads it: another rank's folder may not be shared or up to date
            key = EmbeddingCache.key(self.encoder, ids, texts, settings)
            vectors = self.cache.load(key, len(texts)) if rank == 0 else None
            if from_rank_0(vectors is not None, world):
                log.info("corpus embeddings reused from %s (fingerprint %s)", self.cache.folder, key)
                self.timings["embeddings_reused"] = 1.0
                return vectors
        args = {**self.encode_args, "precision": precision}
        part = encode_texts(self.encoder, texts[rank::world], "docs", self.batch_size, **args)
        vectors = gather_rows(part, len(texts), rank, world)
        if vectors is None:
            return None
        if world > 1:
            log.info("corpus encoded in %d shards (one per rank)", world)
        if self.cache is not None:
            self.cache.save(key, vectors, {"documents": len(ids), "encoder": type(self.encoder).__name__, **settings})
        return vectors

    def search(self, queries: dict[str, str], k: int) -> Run:
        start = time.perf_counter()
        vectors = self.encode(list(queries.values()), "queries")
        run = self.search_vectors(list(queries), vectors, k)
        self.timings["search_s_per_query"] = (time.perf_counter() - start) / max(1, len(queries))  # batched
        return run

    def encode(self, texts: list[str], side: str) -> np.ndarray:
        """``texts`` through the encoder's ``side`` ("queries" or "docs") tower, as the index's vectors are."""
        batch_size = self.query_batch_size if side == "queries" else self.batch_size
        return encode_texts(self.encoder, texts, side, batch_size, **self.encode_args)

    def search_vectors(self, qids: list[str], vectors: np.ndarray, k: int) -> Run:
        """The top ``k`` documents of each query vector (one row per id of ``qids``) by inner product."""
        if self.faiss is None:
            raise RuntimeError("DenseRetriever.search called before index()")
        scores, ids = self.faiss.search(vectors, k)
        return {
            qid: {did: float(s) for did, s in zip(row_ids, row_scores, strict=False)}
            for qid, row_ids, row_scores in zip(qids, ids, scores, strict=True)
        }
