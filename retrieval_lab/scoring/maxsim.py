"""Late-interaction (ColBERT MaxSim) scores as pure functions over token vectors and masks.

``maxsim_scores`` scores padded ``(B, L, d)`` batches (training, re-ranking a few candidates);
``packed_maxsim`` scores one query against documents stored back to back as ``(T, d)`` rows (the index).
Where no mask is given, all-zero token vectors count as padding: ColBERT zeroes the vectors it drops, and an
L2-normalized vector is never zero, so the mask travels with the vectors through gathers and slices.
"""

from __future__ import annotations

import numpy as np
import torch


def token_mask(vectors: torch.Tensor) -> torch.Tensor:
    """Which token vectors are real: the non-zero ones.

    >>> token_mask(torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    tensor([[ True, False]])
    """
    return vectors.ne(0).any(dim=-1)  # (B, L)


def maxsim_scores(
    q: torch.Tensor, d: torch.Tensor, q_mask: torch.Tensor | None = None, d_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over each query token of its largest inner product with any document token, for every pair.

    ``q`` is ``(Bq, Lq, dim)``, ``d`` is ``(Bd, Ld, dim)``; masks are ``(B, L)`` (true or 1 for a real token).
    Masked query tokens add nothing; masked document tokens are never the maximum; a document with no real
    token scores 0.

    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> d = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [9.0, 9.0]], [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    >>> maxsim_scores(q, d, d_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    tensor([[1.5000, 1.0000]])
    """
    q_mask = token_mask(q) if q_mask is None else q_mask.bool()  # (Bq, Lq)
    d_mask = token_mask(d) if d_mask is None else d_mask.bool()  # (Bd, Ld)
    sims = torch.einsum("aid,bjd->abij", q, d)  # (Bq, Bd, Lq, Ld)
    sims = sims.masked_fill(~d_mask[None, :, None, :], torch.finfo(sims.dtype).min)
    best = sims.amax(dim=-1)  # (Bq, Bd, Lq)
    best = best.masked_fill(~d_mask.any(dim=-1)[None, :, None], 0.0)  # empty documents score 0
    return (best * q_mask[:, None, :].to(best.dtype)).sum(dim=-1)  # (Bq, Bd)


def packed_maxsim(q: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """MaxSim of one query ``(Lq, dim)`` with documents whose token vectors lie back to back in ``tokens``
    ``(T, dim)``, document i owning the next ``lengths[i]`` rows (every length >= 1). Returns ``(n,)`` float32.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> tokens = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=np.float16)
    >>> packed_maxsim(q, tokens, np.array([2, 1]))
    array([1.5, 1. ], dtype=float32)
    """
    lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))  # (n,)
    if not len(lengths):
        return np.zeros(0, dtype=np.float32)
    if lengths.min() < 1:
        raise ValueError("packed_maxsim: every document needs at least one token vector")
    # torch: its fp16 -> fp32 cast and segment max run several times faster than numpy's astype and reduceat
    sims = torch.from_numpy(tokens).float() @ torch.as_tensor(q, dtype=torch.float32).T  # (T, Lq)
    return torch.segment_reduce(sims, "max", lengths=lengths, axis=0).sum(dim=1).numpy()  # (n,)
