"""InfoNCE (sampled softmax) over in-batch documents plus hard negatives, gathered across DDP ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather

from retrieval_lab.objectives.masking import MaskedShare, gather_keys
from retrieval_lab.objectives.surrogate import SurrogateFilter, require_surrogate_inputs


def infonce_loss(scores: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each query's positive against every document column, scores divided by ``temperature``.

    >>> scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(infonce_loss(scores, torch.tensor([0, 1]), 1.0).item(), 4)
    0.3133
    """
    return F.cross_entropy(scores / temperature, labels)  # ()


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` from every rank (rank order), keeping the autograd path to this rank's slice.

    Returns the global tensor and the row offset of this rank's rows in it; a no-op outside DDP.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    gathered = all_gather(x.contiguous())  # world x (n, d), differentiable
    return torch.cat(gathered, dim=0), dist.get_rank() * x.shape[0]  # (world * n, d)


class InfoNCE(MaskedShare, nn.Module):
    """``forward(q, d, score_fn, labels)``: queries ``(B, d)``, documents ``(B * (1 + n), d)`` laid out as the B
    positives (row i belongs to query i) followed by the hard negatives. Every query is scored against every
    document of the global batch: under DDP documents from all ranks are gathered with gradients, so each
    rank's loss sees the global batch and DDP's gradient averaging gives the gradient of the mean loss.

    With ``mask_false_negatives`` (the default) a document that is a labelled positive of a row's query, or a
    copy of its positive, leaves that row's softmax (``objectives/masking.py``); ``labels`` are the batch's.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        gather_across_ranks: bool = True,
        mask_false_negatives: bool = True,
        surrogate: SurrogateFilter | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_across_ranks, self.mask_false_negatives = gather_across_ranks, mask_false_negatives
        self.surrogate = surrogate
        self.needs_batch = surrogate is not None  # the surrogate re-reads the batch's texts
        self._tokenizer = None

    def bind(self, encoder) -> None:
        self._tokenizer = getattr(encoder, "tokenizer", None)  # to decode the batch for the surrogate

    def forward(self, q: torch.Tensor, d: torch.Tensor, score_fn, labels: dict | None = None,
                batch: dict | None = None) -> torch.Tensor:  # fmt: skip
        if d.shape[0] < q.shape[0] or d.shape[0] % q.shape[0]:
            raise ValueError(f"expected B * (1 + n) documents for {q.shape[0]} queries, got {d.shape[0]}")
        offset = 0
        if self.gather_across_ranks:
            d, offset = gather_with_grad(d)  # (world * B * (1 + n), dim)
        scores = score_fn(q, d)  # (B, world * B * (1 + n))
        targets = torch.arange(q.shape[0], device=q.device) + offset  # (B,)
        mask = None
        if self.mask_false_negatives:
            columns = gather_keys if self.gather_across_ranks else None
            mask = self.false_negatives(labels, targets, "infonce", columns)  # (B, world * B * (1 + n))
        if self.surrogate is not None:
            require_surrogate_inputs(batch, self._tokenizer, "infonce")
            if not self.gather_across_ranks and dist.is_available() and dist.is_initialized():
                raise ValueError("objective.surrogate scores every rank's documents: keep gather_across_ranks=true")
            filtered = self.surrogate.mask(batch, targets, self._tokenizer).to(scores.device)  # (B, world * N)
            mask = filtered if mask is None else mask | filtered
            self.masked_share = mask.float().mean().detach()
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return infonce_loss(scores, targets, self.temperature)
