"""Label-aware masking of false negatives: a document relevant to a row's query is never that row's negative.

Every training batch carries its labels (``TrainingCollator``): ``doc_keys`` ``(N,)``, one integer per
document of the batch (the document layout the objectives get: the B positives, then each query's
negatives), and ``positive_keys`` ``(B, P)``, every labelled positive of each query, padded with -1. Keys
are stable hashes of document ids (``doc_key``), equal on every rank, so a rank can compare them with the
documents gathered from the others. Pre-training pairs use the same rule with the article (or link target) a
pair came from as its key: two pairs of the same article are not each other's negatives.

The objectives remove a masked score from the row's softmax (``-inf``), except the row's own positive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.distributed as dist

PAD_KEY = -1  # keys are non-negative, so -1 pads ``positive_keys``


def doc_key(doc_id: str) -> int:
    """A stable non-negative 63-bit integer for a document id (the same in every process and run).

    >>> doc_key("d1") == doc_key("d1") and doc_key("d1") != doc_key("d2") and doc_key("d1") >= 0
    True
    """
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") >> 1


def batch_labels(doc_ids: list[str], positives: list[list[str]]) -> dict[str, torch.Tensor]:
    """``{"doc_keys": (N,), "positive_keys": (B, P)}`` for a batch's documents and each query's positives.

    >>> labels = batch_labels(["a", "b", "c"], [["a"], ["b", "c"]])
    >>> labels["positive_keys"].shape, int(labels["positive_keys"][0, 1])
    (torch.Size([2, 2]), -1)
    """
    width = max(len(p) for p in positives)
    keys = torch.full((len(positives), width), PAD_KEY, dtype=torch.long)  # (B, P)
    for row, ids in enumerate(positives):
        keys[row, : len(ids)] = torch.tensor([doc_key(d) for d in ids], dtype=torch.long)
    return {"doc_keys": torch.tensor([doc_key(d) for d in doc_ids], dtype=torch.long), "positive_keys": keys}


def false_negative_mask(doc_keys: torch.Tensor, positive_keys: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` True where column j of row i must leave row i's softmax: document j is a labelled positive of
    query i, or a copy of row i's own positive, and j is not row i's target column.

    ``doc_keys`` is ``(N,)`` (the columns every row scores) or ``(B, N)`` (each row's own columns);
    ``positive_keys`` ``(B, P)`` padded with -1; ``targets`` ``(B,)`` the column of each row's positive.

    >>> docs = torch.tensor([10, 20, 30, 10])  # document 3 is a copy of document 0
    >>> false_negative_mask(docs, torch.tensor([[10, -1], [20, 30]]), torch.tensor([0, 1])).int()
    tensor([[0, 0, 0, 1],
            [0, 0, 1, 0]], dtype=torch.int32)
    """
    b = positive_keys.shape[0]
    keys = doc_keys.expand(b, -1) if doc_keys.ndim == 1 else doc_keys  # (B, N)
    relevant = (keys[:, :, None] == positive_keys[:, None, :]).any(-1)  # (B, N)
    own = keys.gather(1, targets[:, None])  # (B, 1) the key of each row's positive
    mask = relevant | (keys == own)  # (B, N)
    mask[torch.arange(b, device=mask.device), targets] = False
    return mask


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (keys ``(N,)``, or vectors) from every rank in rank order, without gradient; a no-op
    outside DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)  # (world * N, ...)


gather_keys = gather_no_grad  # the batch's document keys, gathered as the objectives gather the documents


def require_labels(labels: dict | None, objective: str) -> dict:
    """The batch's labels, or a clear error: masking cannot guess which documents are relevant."""
    if labels is None:
        raise ValueError(
            f"objective={objective} masks false negatives (objective.mask_false_negatives=true) and needs the "
            "batch's labels (document ids): the lab's collators add them; set objective.mask_false_negatives="
            "false to train without"
        )
    return labels


class MaskedShare:
    """Mixin for objectives: builds a batch's false-negative mask and remembers the share of scores it masked,
    for the module to log."""

    masked_share: torch.Tensor | None = None

    def false_negatives(
        self, labels: dict | None, targets: torch.Tensor, objective: str, columns: Callable | None = None
    ) -> torch.Tensor:
        """``false_negative_mask`` of the batch's ``labels``, recorded as ``masked_share``. ``columns`` maps the
        batch's ``doc_keys`` to those of the scored columns where they differ (gathered across ranks, or each
        row's own documents)."""
        labels = require_labels(labels, objective)
        keys = labels["doc_keys"] if columns is None else columns(labels["doc_keys"])
        mask = false_negative_mask(keys, labels["positive_keys"], targets)
        self.masked_share = mask.float().mean().detach()
        return mask
