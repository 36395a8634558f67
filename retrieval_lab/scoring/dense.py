"""Single-vector scores as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dot_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Inner products of every query with every document.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> d = torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    >>> dot_scores(q, d)
    tensor([[3., 1., 0.],
            [2., 2., 2.]])
    """
    return q @ d.transpose(0, 1)  # (Bq, Bd)


def cosine_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query with every document.

    >>> cosine_scores(torch.tensor([[2.0, 0.0]]), torch.tensor([[5.0, 0.0], [0.0, 1.0]]))
    tensor([[1., 0.]])
    """
    return F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).transpose(0, 1)  # (Bq, Bd)
