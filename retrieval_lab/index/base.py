"""The index abstraction: ``add``, ``search``, ``save``, ``load``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class VectorIndex(ABC):
    """Maximum-inner-product search over vectors identified by string ids."""

    @abstractmethod
    def add(self, vectors: np.ndarray, ids: list[str]) -> None: ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Return ``(scores (Q, k), ids)`` best first; fewer than k ids where the index holds fewer."""

    @abstractmethod
    def save(self, folder: str | Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: str | Path) -> VectorIndex: ...

    @abstractmethod
    def __len__(self) -> int: ...
