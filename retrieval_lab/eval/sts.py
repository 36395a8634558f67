"""Sentence-similarity scores: cosine similarity of two sentences' vectors, correlated with the gold scores."""

from __future__ import annotations

import numpy as np
from scipy import stats


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``.

    >>> cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])).round(6).tolist()
    [1.0, -1.0]
    """
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (N,)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)  # (N,)


def correlations(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation of predicted similarities with gold scores (scipy's)."""
    if len(predicted) != len(gold) or len(gold) < 2:
        raise ValueError(f"need two equal-length score lists of at least 2, got {len(predicted)} and {len(gold)}")
    return {
        "spearman": float(stats.spearmanr(predicted, gold).statistic),
        "pearson": float(stats.pearsonr(predicted, gold).statistic),
    }
