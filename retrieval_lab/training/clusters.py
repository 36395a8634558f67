"""Cluster batches (CDE, Morris & Rush 2024): training batches drawn from clusters of similar (query, document)
pairs, so in-batch negatives are hard ones.

``datamodule.batching=cluster``: each training pair is embedded as the text "query document" (its first positive)
by an embedder (the encoder being trained, a named model, or BM25 weights reduced by a truncated SVD), FAISS
spherical k-means cuts the pairs into about ``len / batch_size`` clusters, clusters are laid end to end (in a
random order, or by a greedy nearest-centroid tour), their members shuffled within, the sequence cut into whole
global batches, and the batches shuffled. With
``recluster: true`` every epoch embeds and clusters again with the weights it starts with. The order of each
epoch is kept in the data module's state (checkpoints hold it), so a resumed run replays the same batches.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import faiss
import numpy as np

from retrieval_lab.training.data import EpochShuffleSampler

log = logging.getLogger(__name__)
ORDERS = ("random", "tour")


def spherical_kmeans(
    vectors: np.ndarray, k: int, seed: int, niter: int = 20, nredo: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``(assignment (N,), centroids (k, d))`` of L2-normalised ``vectors`` by FAISS spherical k-means, the best
    of ``nredo`` runs."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(x)
    k = max(1, min(k, len(x)))
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, spherical=True, seed=seed, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(256, len(x)))  # fmt: skip
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0], kmeans.centroids


def bm25_svd_vectors(texts: list[str], dims: int = 128, seed: int = 0) -> np.ndarray:
    """Each text's BM25 term weights (bm25s, Lucene scoring, English stopwords) reduced to ``dims`` by a truncated
    SVD: dense vectors for clustering without a neural model."""
    import bm25s
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import svds

    tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
    bm25 = bm25s.BM25()
    bm25.index(tokens, show_progress=False)
    scores = bm25.scores  # (texts x terms) in CSC, as bm25s stores its index
    matrix = csc_matrix((scores["data"], scores["indices"], scores["indptr"]),
                        shape=(scores["num_docs"], len(scores["indptr"]) - 1))  # fmt: skip
    k = max(1, min(dims, min(matrix.shape) - 1))
    u, s, _ = svds(matrix.astype(np.float64), k=k, random_state=seed)
    return (u * s).astype(np.float32)  # (N, k)


def tour(centroids: np.ndarray, start: int) -> list[int]:
    """A greedy nearest-neighbour tour over the centroids (by inner product), from ``start``.

    >>> tour(np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]]), 0)
    [0, 2, 1]
    """
    left, path = set(range(len(centroids))) - {start}, [start]
    while left:
        here = centroids[path[-1]]
        path.append(max(sorted(left), key=lambda c: float(centroids[c] @ here)))
        left.remove(path[-1])
    return path


def pack(assignment: np.ndarray, centroids: np.ndarray, global_batch: int, order: str, rng: random.Random) -> list[int]:
    """Example indices in training order: clusters end to end (random order or a tour), members shuffled, cut into
    whole global batches, the batches shuffled; the remainder that fills no batch is dropped."""
    clusters = [c for c in range(len(centroids)) if (assignment == c).any()]
    if order == "tour":
        path = tour(centroids, clusters[rng.randrange(len(clusters))])
        clusters = [c for c in path if c in set(clusters)]
    else:
        rng.shuffle(clusters)
    sequence = []
    for c in clusters:
        members = np.flatnonzero(assignment == c).tolist()
        rng.shuffle(members)
        sequence += members
    batches = [sequence[i : i + global_batch] for i in range(0, len(sequence) - global_batch + 1, global_batch)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


class ClusterBatchSampler(EpochShuffleSampler):
    """Yields ``(epoch, index, batch)`` keys of this rank's share of each global batch, in the order ``order_of(epoch)``
    gives (one list of example indices per epoch, whole global batches); resume as ``EpochShuffleSampler``."""

    def __init__(self, order_of: Callable[[int], list[int]], num_examples: int, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        super().__init__(num_examples, batch_size, seed=0, rank=rank, world_size=world_size)
        self.order_of = order_of

    def __iter__(self):
        order = self.order_of(self.epoch)
        skip, self._skip = self._skip, 0
        for b in range(skip, len(order) // (self.batch_size * self.world_size)):
            start = (b * self.world_size + self.rank) * self.batch_size
            batch = self.epoch * self.num_batches + b  # counted over the whole run
            yield from ((self.epoch, i, batch) for i in order[start : start + self.batch_size])


class ClusterOrders:
    """Each epoch's order of training examples, computed once (the first time it is asked for) and remembered, so
    a checkpoint can hold it. ``embed`` returns one vector per training pair (with the weights of that moment)."""

    def __init__(self, embed: Callable[[], np.ndarray], global_batch: int, seed: int, order: str = "random",
                 recluster: bool = False, niter: int = 20) -> None:  # fmt: skip
        if order not in ORDERS:
            raise ValueError(f"datamodule.cluster.order must be one of {ORDERS}, got {order!r}")
        self.embed, self.global_batch, self.seed = embed, global_batch, seed
        self.order, self.recluster, self.niter = order, recluster, niter
        self.orders: dict[int, list[int]] = {}
        self._clusters: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            if self._clusters is None or self.recluster:
                vectors = self.embed()
                k = max(1, len(vectors) // self.global_batch)
                self._clusters = spherical_kmeans(vectors, k, self.seed + epoch, self.niter)
                sizes = np.bincount(self._clusters[0])
                sizes = sizes[sizes > 0]
                log.info("epoch %d: %d training pairs in %d clusters (sizes %d-%d, median %d)", epoch,
                         len(vectors), len(sizes), sizes.min(), sizes.max(), np.median(sizes))  # fmt: skip
            rng = random.Random(f"{self.seed}:{epoch}:clusters")
            self.orders[epoch] = pack(*self._clusters, self.global_batch, self.order, rng)
        return self.orders[epoch]

    def state_dict(self) -> dict:
        state: dict = {"orders": {str(e): o for e, o in self.orders.items()}}
        if self._clusters is not None:  # the clustering later epochs pack from (without recluster)
            state["assignment"], state["centroids"] = self._clusters[0].tolist(), self._clusters[1].tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.orders = {int(e): list(o) for e, o in state.get("orders", {}).items()}
        if "assignment" in state:
            self._clusters = (np.array(state["assignment"]), np.array(state["centroids"], dtype=np.float32))
