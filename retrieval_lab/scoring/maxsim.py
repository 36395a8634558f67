"""Late-interaction (ColBERT MaxSim) scores as pure functions over token vectors and masks.

``maxsim_scores`` scores padded ``(B, L, d)`` batches (training, re-ranking a few candidates);
``segment_maxsim`` scores a stack of queries against documents stored back to back as ``(T, d)`` rows (the
index); ``packed_maxsim`` is its one-query numpy form. ``padded_blocks`` regroups such documents once for
``blocked_maxsim``, which scores many queries against a whole corpus (exact search, ANN mining's positive ranks)
about twice as fast as ``segment_maxsim`` (a max over a padded axis instead of a segment reduce, and blocks
small enough to stay in cache).
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


def segment_maxsim(tokens: torch.Tensor, lengths: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """MaxSim of each of ``g`` equal-length queries ``(g, Lq, dim)`` with documents whose token vectors lie back
    to back in ``tokens`` ``(T, dim)``, document i owning the next ``lengths[i]`` rows: ``(g, n)``. One matrix
    product for the whole stack, then a segment max per document and a sum over query tokens.

    >>> tokens = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    >>> segment_maxsim(tokens, torch.tensor([2, 1]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]]))
    tensor([[1.5000, 1.0000],
            [1.0000, 2.0000]])
    """
    g, length, dim = queries.shape
    if lengths.numel() and int(lengths.min()) < 1:
        raise ValueError("MaxSim over packed documents: every document needs at least one token vector")
    sims = tokens @ queries.reshape(g * length, dim).T  # (T, g*Lq)
    best = torch.segment_reduce(sims, "max", lengths=lengths, axis=0)  # (n, g*Lq)
    return best.reshape(len(lengths), g, length).sum(dim=2).T  # (g, n)


def packed_maxsim(q: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``segment_maxsim`` of one query ``(Lq, dim)`` with numpy (fp16 or fp32) token vectors: ``(n,)`` float32.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> tokens = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=np.float16)
    >>> packed_maxsim(q, tokens, np.array([2, 1]))
    array([1.5, 1. ], dtype=float32)
    """
    if not len(lengths):
        return np.zeros(0, dtype=np.float32)
    # torch: its fp16 -> fp32 cast and segment max run several times faster than numpy's astype and reduceat
    lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64))  # (n,)
    query = torch.as_tensor(q, dtype=torch.float32)[None]  # (1, Lq, dim)
    return segment_maxsim(torch.from_numpy(tokens).float(), lengths, query)[0].numpy()  # (n,)


def padded_blocks(
    tokens: torch.Tensor, lengths: torch.Tensor, docs_per_block: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Documents stored back to back in ``tokens`` ``(T, dim)`` (document i owns the next ``lengths[i]`` rows),
    regrouped for ``blocked_maxsim``: sorted by length, ``docs_per_block`` at a time, each block ``(c, L_c, dim)``
    padded to its longest document by repeating each document's own vectors (a repeated vector never changes a
    max, so no mask is needed). Returns ``(rows, block)`` pairs, ``rows`` ``(c,)`` the documents' positions.

    >>> tokens = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    >>> [(rows.tolist(), block.tolist()) for rows, block in padded_blocks(tokens, torch.tensor([2, 1]))]
    [([1, 0], [[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.5, 0.5]]])]
    """
    if docs_per_block < 1:
        raise ValueError(f"docs_per_block must be >= 1, got {docs_per_block}")
    if lengths.numel() and int(lengths.min()) < 1:
        raise ValueError("MaxSim over packed documents: every document needs at least one token vector")
    starts = torch.cumsum(lengths, 0) - lengths  # (n,)
    order = torch.argsort(lengths, stable=True)  # (n,) similar lengths share a block: little padding
    blocks = []
    for first in range(0, len(order), docs_per_block):
        rows = order[first : first + docs_per_block]  # (c,)
        own = lengths[rows][:, None]  # (c, 1)
        offsets = torch.arange(int(own.max()))[None, :] % own  # (c, L_c): 0, 1, .., len-1, 0, 1, ..
        blocks.append((rows, tokens[starts[rows][:, None] + offsets]))  # (c, L_c, dim)
    return blocks


def blocked_maxsim(blocks: list[tuple[torch.Tensor, torch.Tensor]], queries: torch.Tensor, n: int) -> torch.Tensor:
    """MaxSim of each of ``g`` queries ``(g, Lq, dim)`` with the ``n`` documents of ``padded_blocks``: ``(g, n)``,
    ``segment_maxsim``'s scores. An all-zero query vector adds 0 (its inner product with every document token is
    0), so queries of different lengths are stacked by padding them with zero vectors.

    >>> tokens = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    >>> queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]])
    >>> blocked_maxsim(padded_blocks(tokens, torch.tensor([2, 1])), queries, 2)
    tensor([[1.5000, 1.0000],
            [1.0000, 2.0000]])
    """
    g, length, dim = queries.shape
    flat = queries.reshape(g * length, dim).T.contiguous()  # (dim, g*Lq)
    best = torch.empty(n, g * length, dtype=queries.dtype)  # (n, g*Lq)
    for rows, block in blocks:
        c, width, _ = block.shape
        best[rows] = (block.reshape(c * width, dim) @ flat).view(c, width, g * length).amax(dim=1)  # (c, g*Lq)
    return best.view(n, g, length).sum(dim=2).T  # (g, n)
