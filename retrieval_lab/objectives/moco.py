"""MoCo (He et al., 2020) as Contriever trains it (Izacard et al., 2021): a momentum key encoder and a queue of
earlier keys as negatives.

Each row's query (the first crop, encoded by the encoder being trained) is scored against its positive key (the
second crop, encoded by the key encoder without gradient) and every key in the queue; one-directional InfoNCE at
the temperature. Before the keys are computed, the key encoder moves towards the query encoder,
``theta_k <- m * theta_k + (1 - m) * theta_q``; after the loss, the batch's keys (gathered across ranks) replace
the oldest ones in the queue, so the queue never holds the current batch's keys when it is scored. The key
encoder, the queue, its document keys and its pointer are buffers and submodules: checkpoints hold them and a
resumed run continues them.

Label-aware masking (``mask_false_negatives``, objectives/masking.py): the queue remembers the document key of each
entry, and an entry from a document relevant to the row (the same article, for pre-training crops) leaves that
row's softmax.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.objectives.masking import MaskedShare, gather_keys, gather_no_grad, require_labels

EMPTY = -2  # the document key of a queue slot no batch has filled yet (doc keys are >= 0, padding is -1)


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """(B, 1 + Q): each query's score with its own key, then with every queued key.

    >>> moco_logits(torch.eye(2), torch.eye(2), torch.tensor([[1.0, 0.0], [0.5, 0.5]])).tolist()
    [[1.0, 1.0, 0.5], [1.0, 0.0, 0.5]]
    """
    positive = (q * k).sum(-1, keepdim=True)  # (B, 1)
    return torch.cat([positive, q @ queue.T], dim=1)  # (B, 1 + Q)


class MoCo(MaskedShare, nn.Module):
    """``objective=moco``. ``bind(encoder)`` (called by the training module) copies the encoder as the key encoder
    (no gradients) and sizes the queue. Batches hold the queries (first crops) and the positives (second crops)."""

    needs_batch = True  # the key encoder reads the positives' tokens
    uses_docs = False  # the module does not encode the positives with the query encoder

    def __init__(self, queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.05,
                 mask_false_negatives: bool = True) -> None:  # fmt: skip
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"objective.queue_size must be >= 1, got {queue_size}")
        if not 0 <= momentum < 1:
            raise ValueError(f"objective.momentum must be in [0, 1), got {momentum}")
        if temperature <= 0:
            raise ValueError(f"objective.temperature must be > 0, got {temperature}")
        self.queue_size, self.momentum, self.temperature = queue_size, momentum, temperature
        self.mask_false_negatives = mask_false_negatives
        self._query_encoder: list[nn.Module] = []  # kept out of this module's parameters (the module owns it)
        self.key_encoder: nn.Module | None = None

    def bind(self, encoder) -> None:
        if getattr(encoder, "multi_vector", False):
            raise ValueError("objective=moco needs a single-vector encoder, not a late-interaction model")
        self._query_encoder = [encoder]
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        probe = encoder.tokenize_queries(["probe"])
        with torch.no_grad():
            dim = encoder.encode_queries(probe).shape[-1]
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, dim), dim=-1))  # (Q, d)
        self.register_buffer("queue_keys", torch.full((self.queue_size,), EMPTY, dtype=torch.long))  # (Q,)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        for k, q in zip(self.key_encoder.parameters(), self._query_encoder[0].parameters(), strict=True):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, doc_keys: torch.Tensor | None) -> None:
        keys = gather_no_grad(keys)  # (world * B, d)
        n = keys.shape[0]
        if self.queue_size % n:
            raise ValueError(f"objective.queue_size ({self.queue_size}) must be a multiple of the global batch ({n})")
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = keys.to(self.queue.dtype)
        if doc_keys is not None:
            self.queue_keys[ptr : ptr + n] = gather_keys(doc_keys)
        self.queue_ptr.fill_((ptr + n) % self.queue_size)

    def forward(self, q: torch.Tensor, d=None, score_fn=None, labels: dict | None = None,
                batch: dict | None = None) -> torch.Tensor:  # fmt: skip
        """q: the queries' vectors (B, d) from the query encoder; ``batch["docs"]`` the positives' tokens."""
        if self.key_encoder is None or batch is None:
            raise RuntimeError("objective=moco must be bound to the encoder and given the batch")
        b = q.shape[0]
        with torch.no_grad():
            self.momentum_update()
            self.key_encoder.train(self.training)
            k = self.key_encoder.encode_docs(batch["docs"])[:b]  # (B, d): the positives (no hard negatives)
        logits = moco_logits(q, k.to(q.dtype), self.queue.clone().to(q.dtype)) / self.temperature  # (B, 1 + Q)
        targets = torch.zeros(b, dtype=torch.long, device=q.device)
        doc_keys = None
        if self.mask_false_negatives:
            labels = require_labels(labels, "moco")
            doc_keys = labels["doc_keys"][:b]
            columns = torch.cat([doc_keys[:, None], self.queue_keys.expand(b, -1)], dim=1)  # (B, 1 + Q)
            mask = self.false_negatives(labels, targets, "moco", columns=lambda _: columns)
            logits = logits.masked_fill(mask, float("-inf"))
        loss = F.cross_entropy(logits.float(), targets)
        self.enqueue(k, doc_keys)
        return loss
