"""Encode once, search many: corpus embeddings saved under a fingerprint of everything that determines them.

The fingerprint hashes the encoder (its class, its settings: pooling, lengths, prefixes..., and every parameter
and buffer, bit for bit), the encoding settings (precision as resolved, the document length) and the corpus (ids
and texts, in order). A later evaluation with the same weights on the same corpus (``task=evaluate``, the hybrid
retriever's dense side, a dev evaluation before any step) loads the vectors instead of encoding. Files are written
under a temporary name and renamed, so a cache entry is whole or absent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from retrieval_lab.utils.io import atomic_file

_SETTINGS = (str, int, float, bool, type(None))


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A hash of the encoder's class, plain settings and every tensor of its state."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(encoder).__qualname__.encode())
    settings = {k: v for k, v in sorted(vars(encoder).items()) if not k.startswith("_") and isinstance(v, _SETTINGS)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def corpus_fingerprint(ids: list[str], texts: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for doc_id, text in zip(ids, texts, strict=True):
        h.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


class EmbeddingCache:
    """``<folder>/<key>.npy`` (float32 vectors in corpus order) beside ``<key>.json`` (what made them)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(encoder: torch.nn.Module, ids: list[str], texts: list[str], settings: dict) -> str:
        parts = [encoder_fingerprint(encoder), corpus_fingerprint(ids, texts), json.dumps(settings, sort_keys=True)]
        return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()

    def load(self, key: str, count: int) -> np.ndarray | None:
        path = self.folder / f"{key}.npy"
        if not path.exists():
            return None
        vectors = np.load(path)
        return vectors if vectors.shape[0] == count else None  # a mismatch is a miss, never a wrong answer

    def save(self, key: str, vectors: np.ndarray, meta: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.folder / f"{key}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float32))
        with atomic_file(self.folder / f"{key}.json") as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
        return self.folder / f"{key}.npy"
