"""The multi-vector (late interaction) index: every document's token vectors, stored back to back in fp16 for
exact MaxSim, and a FAISS index over the same vectors for candidate generation (ColBERT's end-to-end search).

``encode_token_vectors`` keeps every token vector where ``index/encode.py``'s ``encode_texts`` keeps one vector per
text; both run the same loop (``encoded_batches``: length-sorted batches, precision, progress bar).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

from retrieval_lab.index.encode import encoded_batches
from retrieval_lab.models.base import Encoder
from retrieval_lab.scoring.maxsim import blocked_maxsim, packed_maxsim, padded_blocks, token_mask
from retrieval_lab.utils.io import atomic_dir


@torch.inference_mode()
def encode_token_vectors(
    encoder: Encoder,
    texts: Sequence[str],
    side: str = "docs",
    batch_size: int = 32,
    precision: str = "auto",
    show_progress: bool = True,
    device: str | torch.device | None = None,
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The kept token vectors of every text, back to back in input order, as ``(T, dim)`` float16, and the number
    of vectors of each text ``(N,)``. Masked tokens (zero vectors: padding, punctuation) are dropped. The
    batching, precision and ``max_length`` are ``encode_texts``'s (``index/encode.encoded_batches``)."""
    per_text: list[np.ndarray] = [np.empty(0)] * len(texts)
    for rows, vectors in encoded_batches(
        encoder, texts, side, batch_size, precision, show_progress, device, max_length, what=" tokens"
    ):
        if vectors.ndim != 3:
            raise ValueError(f"{type(encoder).__name__} gives single vectors; token vectors need model=colbert")
        keep = token_mask(vectors)  # (b, L)
        vectors = vectors.to(torch.float16)
        for i, row in enumerate(rows):
            per_text[row] = vectors[i][keep[i]].numpy()  # (L_i, dim)
    lengths = np.array([len(v) for v in per_text], dtype=np.int64)
    return np.concatenate(per_text), lengths


def auto_factory(num_vectors: int) -> str:
    """An IVF factory sized to the corpus: about sqrt(T) lists of 8-bit scalar-quantized vectors (candidates
    only: the exact scores come from the fp16 store); "Flat" where there are too few vectors to train one.
    (IVF-PQ, as ColBERT v1 used, is 8x smaller but its training took minutes for 63k vectors on 2 CPU cores.)

    >>> auto_factory(1_000), auto_factory(75_000), auto_factory(1_300_000)
    ('Flat', 'IVF256,SQ8', 'IVF1024,SQ8')
    """
    nlist = 2 ** int(math.log2(max(1.0, math.sqrt(num_vectors))))
    if num_vectors < 39 * 64 or nlist < 16:  # k-means wants ~39 points per list
        return "Flat"
    return f"IVF{nlist},SQ8"


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest ``scores``, best first, equal scores in position order (a partial sort:
    a whole corpus's scores are not sorted to keep a few).

    >>> top_rows(np.array([0.1, 0.5, 0.9, 0.5]), 3)
    array([2, 1, 3])
    """
    keep = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return keep[np.lexsort((keep, -scores[keep]))]


class MultiVectorIndex:
    """Token vectors of documents: ``add`` once, then ``search`` (FAISS candidates, exact MaxSim re-ranking),
    ``rerank`` (exact MaxSim over given documents; every row: the whole corpus) or ``iter_exact_scores`` (many
    queries against the whole corpus, a group at a time)."""

    def __init__(self, dim: int, factory: str = "auto", nprobe: int = 32, build_ann: bool = True) -> None:
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if factory != "auto":
            try:
                faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as err:
                raise ValueError(f"index factory {factory!r} is not a valid FAISS factory string: {err}") from err
        self.dim, self.factory, self.nprobe, self.build_ann = dim, factory, nprobe, build_ann
        self.ann: faiss.Index | None = None
        self.factory_used: str | None = None  # the factory string "auto" resolved to
        self.tokens = np.zeros((0, dim), dtype=np.float16)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.starts = np.zeros(1, dtype=np.int64)
        self.ids: list[str] = []
        self._blocks: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # padded_blocks, built on first use

    def add(self, tokens: np.ndarray, lengths: np.ndarray, ids: list[str]) -> None:
        """``tokens`` ``(T, dim)`` back to back, ``lengths`` ``(N,)``, one id per document; builds the index."""
        if self.ids:
            raise RuntimeError("MultiVectorIndex.add is called once, with the whole corpus")
        if tokens.ndim != 2 or tokens.shape[1] != self.dim or int(np.sum(lengths)) != len(tokens):
            raise ValueError(f"expected (sum(lengths), {self.dim}) token vectors, got {tokens.shape}")
        if len(ids) != len(lengths):
            raise ValueError(f"{len(ids)} ids for {len(lengths)} documents")
        self.tokens = np.ascontiguousarray(tokens, dtype=np.float16)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.ids = list(ids)
        if self.build_ann:
            self._build_ann()

    def _build_ann(self) -> None:
        self.factory_used = auto_factory(len(self.tokens)) if self.factory == "auto" else self.factory
        self.ann = faiss.index_factory(self.dim, self.factory_used, faiss.METRIC_INNER_PRODUCT)
        vectors = self.tokens.astype(np.float32)
        if not self.ann.is_trained:
            self.ann.train(vectors)
        self.ann.add(vectors)
        self._set_nprobe()

    def _set_nprobe(self) -> None:
        try:
            faiss.ParameterSpace().set_index_parameter(self.ann, "nprobe", self.nprobe)
        except RuntimeError:
            pass  # not an IVF index

    def candidates(self, q: np.ndarray, per_token: int) -> np.ndarray:
        """Rows of the documents owning any of each query token's ``per_token`` nearest token vectors."""
        if self.ann is None:
            raise RuntimeError("this MultiVectorIndex was built without its FAISS index (build_ann=False)")
        _, rows = self.ann.search(np.ascontiguousarray(q, dtype=np.float32), min(per_token, len(self.tokens)))
        rows = rows[rows >= 0]
        return np.unique(np.searchsorted(self.starts, rows, side="right") - 1)  # (C,)

    def rerank(self, q: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact MaxSim of query ``q`` ``(Lq, dim)`` with the documents at rows ``docs``; the top ``k`` (scores,
        rows), best first."""
        docs = np.asarray(docs, dtype=np.int64)
        lengths = self.lengths[docs]  # (C,)
        offsets = np.cumsum(lengths) - lengths  # (C,) where each document starts in the gathered block
        rows = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths) + np.repeat(self.starts[docs], lengths)
        scores = packed_maxsim(q, self.tokens[rows], lengths)  # (C,)
        top = top_rows(scores, k)
        return scores[top], docs[top]

    def iter_exact_scores(self, queries: Sequence[np.ndarray], group: int = 16) -> Iterator[tuple[range, np.ndarray]]:
        """Exact MaxSim of every query (each ``(Lq_i, dim)``) with every document, ``group`` queries at a time in
        input order: ``(positions, (len(positions), N) float32)`` pairs. The first call copies the store to
        float32 blocks of similar-length documents (``scoring/maxsim.padded_blocks``, kept for later calls); a
        group's queries, padded with zero vectors to one length, are scored against each block in one matrix
        product, so scoring the whole corpus for many queries (exact search, a refresh's positive ranks) costs a
        few large products instead of one cast and gather per query."""
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        if self._blocks is None:
            self._blocks = padded_blocks(torch.from_numpy(self.tokens).float(), torch.as_tensor(self.lengths))
        for start in range(0, len(queries), group):
            members = queries[start : start + group]
            stack = np.zeros((len(members), max(len(q) for q in members), self.dim), dtype=np.float32)
            for i, q in enumerate(members):
                stack[i, : len(q)] = q  # (Lq_i, dim); the zero rows after it add nothing
            scores = blocked_maxsim(self._blocks, torch.from_numpy(stack), len(self.ids))  # (g, N)
            yield range(start, start + len(members)), scores.numpy()

    def search(self, q: np.ndarray, k: int, per_token: int) -> tuple[np.ndarray, list[str]]:
        """End to end: FAISS candidates for query ``q`` ``(Lq, dim)``, re-ranked by exact MaxSim."""
        scores, rows = self.rerank(q, self.candidates(q, per_token), k)
        return scores, [self.ids[r] for r in rows]

    @property
    def nbytes(self) -> int:
        """Bytes of everything a search reads: the token store, the lengths and the serialized FAISS index."""
        ann = int(faiss.serialize_index(self.ann).nbytes) if self.ann is not None else 0
        return int(self.tokens.nbytes + self.lengths.nbytes) + ann

    @property
    def exact_nbytes(self) -> int:
        """Bytes of the float32 blocks that ``iter_exact_scores`` keeps (0 before its first call)."""
        return sum(int(block.nbytes) for _, block in self._blocks or ())

    def save(self, folder: str | Path) -> None:
        with atomic_dir(folder) as tmp:
            np.save(tmp / "tokens.npy", self.tokens)
            np.save(tmp / "lengths.npy", self.lengths)
            if self.ann is not None:
                faiss.write_index(self.ann, str(tmp / "tokens.faiss"))
            meta = {"dim": self.dim, "factory": self.factory, "nprobe": self.nprobe, "build_ann": self.build_ann,
                    "factory_used": self.factory_used}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta))
            (tmp / "ids.json").write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, folder: str | Path) -> MultiVectorIndex:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        self = cls(meta["dim"], meta["factory"], meta["nprobe"], build_ann=False)
        self.build_ann, self.factory_used = meta["build_ann"], meta["factory_used"]
        self.tokens, self.lengths = np.load(folder / "tokens.npy"), np.load(folder / "lengths.npy")
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.ids = json.loads((folder / "ids.json").read_text())
        if (folder / "tokens.faiss").exists():
            self.ann = faiss.read_index(str(folder / "tokens.faiss"))
            self._set_nprobe()
        return self

    def __len__(self) -> int:
        return len(self.ids)
