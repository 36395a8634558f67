"""False-negative filtering by a surrogate model (CDE, Morris & Rush 2024): an in-batch document leaves a query's
softmax when a frozen surrogate encoder scores it at least ``threshold`` times the query's positive (1.0: at least
as high as the positive); a row whose positive the surrogate scores at or below 0 is left as it is. Unlike
label-aware masking it needs no labels: it catches the unlabelled duplicates and near-duplicates that cluster
batches bring together."""

from __future__ import annotations

import torch
from torch import nn

from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.objectives.masking import gather_no_grad


def require_surrogate_inputs(batch, tokenizer, objective: str) -> None:
    if batch is None or tokenizer is None:
        raise RuntimeError(f"objective={objective} with a surrogate needs the batch and the bound encoder's tokenizer")


class SurrogateFilter(nn.Module):
    """``mask(batch, targets)``: (B, N) True where a column must leave its row's softmax. The surrogate re-tokenizes
    the batch for itself (decoding the trained model's ids), is frozen and stays in eval mode."""

    def __init__(self, model: Encoder, threshold: float = 1.0) -> None:
        super().__init__()
        if threshold <= 0:
            raise ValueError(f"objective.surrogate.threshold must be > 0, got {threshold}")
        if getattr(model, "multi_vector", False):
            raise ValueError("objective.surrogate must be a single-vector encoder (model=biencoder)")
        self.model, self.threshold = model.requires_grad_(False).eval(), threshold

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def scores(self, batch: dict[str, Batch], tokenizer, gather: bool = True) -> torch.Tensor:
        """The surrogate's (B, world * N) scores of this rank's queries against every rank's documents (``gather``;
        else (B, N) against this rank's, for objectives that score their own batch only)."""
        device = next(self.model.parameters()).device
        vectors = []
        for side, tokenize, encode in (("queries", self.model.tokenize_queries, self.model.encode_queries),
                                       ("docs", self.model.tokenize_docs, self.model.encode_docs)):  # fmt: skip
            texts = tokenizer.batch_decode(batch[side]["input_ids"], skip_special_tokens=True)
            vectors.append(encode({k: v.to(device) for k, v in tokenize(texts).items()}))
        return self.model.score(vectors[0], gather_no_grad(vectors[1]) if gather else vectors[1])  # (B, world * N)

    def mask(self, batch: dict[str, Batch], targets: torch.Tensor, tokenizer, gather: bool = True) -> torch.Tensor:
        """(B, world * N) (or (B, N) without ``gather``) True where a document leaves the row's softmax; ``targets``
        (B,) are the rows' positive columns, never filtered."""
        scores = self.scores(batch, tokenizer, gather)  # (B, world * N)
        rows = torch.arange(len(targets), device=scores.device)
        positive = scores[rows, targets.to(scores.device)]  # (B,)
        # where the surrogate scores the positive at or below 0 it has no opinion on the row: nothing is filtered
        mask = (scores >= self.threshold * positive[:, None]) & (positive[:, None] > 0)  # (B, world * N)
        mask[rows, targets] = False
        return mask
