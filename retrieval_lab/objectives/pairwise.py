"""ColBERT's pairwise softmax: each query against its own positive and hard negatives only, no in-batch documents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.objectives.masking import MaskedShare
from retrieval_lab.objectives.surrogate import SurrogateFilter, require_surrogate_inputs


def own_document_columns(num_queries: int, num_docs: int) -> torch.Tensor:
    """Row indices ``(B, 1 + n)`` into the documents of each query's positive, then its negatives (documents are
    laid out as the B positives, then query 0's n negatives, query 1's, ...).

    >>> own_document_columns(2, 6)
    tensor([[0, 2, 3],
            [1, 4, 5]])
    """
    n = num_docs // num_queries - 1
    rows = torch.arange(num_queries)[:, None]  # (B, 1)
    return torch.cat([rows, num_queries + rows * n + torch.arange(n)[None, :]], dim=1)  # (B, 1 + n)


def pairwise_softmax_loss(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the positive (column 0) against the query's own negatives: ``scores`` is ``(B, 1 + n)``.

    >>> round(pairwise_softmax_loss(torch.tensor([[2.0, 0.0]])).item(), 4)
    0.1269
    """
    labels = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)  # (B,)
    return F.cross_entropy(scores / temperature, labels)  # ()


class PairwiseSoftmax(MaskedShare, nn.Module):
    """``forward(q, d, score_fn, labels)`` with documents ``(B * (1 + n), ...)`` as InfoNCE gets them; only the
    (q, d+, d-) triples are scored against each other, as in the ColBERT paper. Needs hard negatives (n >= 1):
    with ``negatives=in_batch`` there is nothing to compare the positive with. Nothing is gathered across ranks.
    With ``mask_false_negatives`` a negative that is a labelled positive of the query (or a copy of its
    positive) leaves the softmax, as in InfoNCE; a ``surrogate`` (CDE's filter) also drops the negatives it
    scores at least ``threshold`` x the query's positive.
    """

    def __init__(
        self, temperature: float = 1.0, mask_false_negatives: bool = True, surrogate: SurrogateFilter | None = None
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature, self.mask_false_negatives = float(temperature), mask_false_negatives
        self.surrogate = surrogate
        self.needs_batch = surrogate is not None  # the surrogate re-reads the batch's texts
        self._tokenizer = None

    def bind(self, encoder) -> None:
        self._tokenizer = getattr(encoder, "tokenizer", None)  # to decode the batch for the surrogate

    def forward(
        self, q: torch.Tensor, d: torch.Tensor, score_fn, labels: dict | None = None, batch: dict | None = None
    ) -> torch.Tensor:
        b = q.shape[0]
        if d.shape[0] % b or d.shape[0] < 2 * b:
            raise ValueError(
                f"objective=pairwise needs B * (1 + n) documents with n >= 1 hard negatives for {b} queries, got "
                f"{d.shape[0]}: use negatives=bm25, random or ance"
            )
        columns = own_document_columns(b, d.shape[0]).to(q.device)  # (B, 1 + n)
        # Query by query: a MaxSim score matrix over the whole batch would cost B times more for the same loss.
        scores = torch.cat([score_fn(q[i : i + 1], d[columns[i]]) for i in range(b)])  # (B, 1 + n)
        mask = None
        if self.mask_false_negatives:
            own = torch.zeros(b, dtype=torch.long, device=q.device)  # (B,) the positive is column 0
            mask = self.false_negatives(labels, own, "pairwise", lambda keys: keys[columns])  # (B, 1 + n)
        if self.surrogate is not None:
            require_surrogate_inputs(batch, self._tokenizer, "pairwise")
            positives = torch.arange(b, device=q.device)  # (B,) row i's positive is document i
            every = self.surrogate.mask(batch, positives, self._tokenizer, gather=False).to(q.device)  # (B, N)
            filtered = every.gather(1, columns)  # (B, 1 + n): the row's own triple
            mask = filtered if mask is None else mask | filtered
            self.masked_share = mask.float().mean().detach()
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return pairwise_softmax_loss(scores, self.temperature)
