"""Masked-language-model pieces: BERT's token masking (seeded, per example) and a prediction head whose output
layer is tied to the encoder's word embeddings."""

from __future__ import annotations

import random
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of unmasked positions (cross-entropy's ignore_index)


def mask_tokens(
    ids: list[int], special: Collection[int], mask_id: int, vocab_size: int, prob: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """BERT masking: each non-special token is picked with ``prob`` (at least one is); a picked token becomes
    ``mask_id`` 80% of the time, a random token 10%, itself 10%. Labels hold the original id where picked.

    >>> ids, labels = mask_tokens([101, 7, 8, 9, 102], {101, 102}, 103, 30, 0.5, random.Random(0))
    >>> [i for i, lab in zip(ids, labels) if lab == IGNORE][:1], labels[0], labels[-1]
    ([101], -100, -100)
    >>> any(lab != IGNORE for lab in labels)
    True
    """
    candidates = [i for i, token in enumerate(ids) if token not in special]
    picked = [i for i in candidates if rng.random() < prob]
    if candidates and not picked:
        picked = [rng.choice(candidates)]
    masked, labels = list(ids), [IGNORE] * len(ids)
    for i in picked:
        labels[i] = ids[i]
        roll = rng.random()
        if roll < 0.8:
            masked[i] = mask_id
        elif roll < 0.9:
            masked[i] = rng.randrange(vocab_size)
    return masked, labels


class MaskedLMHead(nn.Module):
    """Dense -> GELU -> LayerNorm -> logits over the vocabulary, with the word embeddings as output weights."""

    def __init__(self, word_embeddings: nn.Embedding, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        hidden = word_embeddings.embedding_dim
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))
        self._embeddings = [word_embeddings]  # a list keeps the tied weight out of this module's parameters

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))  # (N, H)
        return F.linear(h, self._embeddings[0].weight, self.bias)  # (N, V)


def masked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: MaskedLMHead) -> torch.Tensor:
    """Cross-entropy at the masked positions only (the head runs on those rows, not the whole batch).

    >>> emb = nn.Embedding(10, 4)
    >>> loss = masked_lm_loss(torch.randn(2, 3, 4), torch.tensor([[IGNORE, 3, IGNORE], [1, IGNORE, IGNORE]]),
    ...                       MaskedLMHead(emb))
    >>> loss.ndim, bool(loss > 0)
    (0, True)
    """
    picked = labels != IGNORE  # (B, L)
    logits = head(hidden[picked])  # (N, V)
    return F.cross_entropy(logits.float(), labels[picked])  # ()
