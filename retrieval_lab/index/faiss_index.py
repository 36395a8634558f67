"""FAISS behind the VectorIndex interface, built from a factory string (``Flat``, ``HNSW32``, ``IVF256,PQ32``...)."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from retrieval_lab.index.base import VectorIndex
from retrieval_lab.utils.io import atomic_dir


class FaissIndex(VectorIndex):
    """Inner-product FAISS index. Trainable factories (IVF, PQ) train on the first ``add``."""

    def __init__(
        self, dim: int, factory: str = "Flat", nprobe: int = 16, ef_search: int = 128, refine_k_factor: int = 4
    ) -> None:
        try:
            self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"index.factory {factory!r} is not a valid FAISS factory string: {err}") from err
        self.dim, self.factory = dim, factory
        self._configure(nprobe, ef_search, refine_k_factor)
        self.ids: list[str] = []

    def _configure(self, nprobe: int, ef_search: int, refine_k_factor: int) -> None:
        """Set the search knobs the factory has: IVF's ``nprobe``, HNSW's ``efSearch``, and ``Refine``'s k-factor
        (a ``...,Refine(SQ8)`` index fetches ``refine_k_factor * k`` candidates and re-ranks them exactly)."""
        knobs = {"nprobe": nprobe, "ef_search": ef_search, "refine_k_factor": refine_k_factor}
        for key, value in knobs.items():
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value} (retriever.{key})")
        self.nprobe, self.ef_search, self.refine_k_factor = nprobe, ef_search, refine_k_factor
        params = faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", refine_k_factor)):
            try:
                params.set_index_parameter(self.index, name, value)
            except RuntimeError:
                pass  # the factory has no such knob (Flat has none)

    @property
    def search_knobs(self) -> dict[str, int]:
        """The search parameters now set, as ``_configure`` takes them (and ``meta.json`` keeps them)."""
        return {"nprobe": self.nprobe, "ef_search": self.ef_search, "refine_k_factor": self.refine_k_factor}

    def add(self, vectors: np.ndarray, ids: list[str]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not self.index.is_trained:
            self.index.train(vectors)
        self.index.add(vectors)
        self.ids.extend(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        k = min(k, len(self.ids))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return scores, ids

    def save(self, folder: str | Path) -> None:
        """Write to ``folder`` atomically: a temporary sibling is filled, then renamed into place."""
        with atomic_dir(folder) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            meta = {"dim": self.dim, "factory": self.factory, **self.search_knobs}
            (tmp / "meta.json").write_text(json.dumps(meta))
            (tmp / "ids.json").write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, folder: str | Path) -> FaissIndex:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        self = cls.__new__(cls)
        self.dim, self.factory = meta["dim"], meta["factory"]
        self.index = faiss.read_index(str(folder / "index.faiss"))
        self._configure(meta["nprobe"], meta["ef_search"], meta.get("refine_k_factor", 4))
        self.ids = json.loads((folder / "ids.json").read_text())
        return self

    def __len__(self) -> int:
        return len(self.ids)
