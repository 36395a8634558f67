"""BoW-MLP: the bag-of-words two-tower baseline of Chang et al. (ICLR 2020), averaged token embeddings then an MLP.

Word order is invisible to it, so it shows how much of a pre-training gain needs a contextual encoder. It uses
the WordPiece tokenizer of ``tokenizer_name`` (the MiniLM vocabulary by default) and random initial weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.backbone import load_tokenizer
from retrieval_lab.models.base import Batch, Encoder, HFTokenized
from retrieval_lab.scoring.dense import cosine_scores, dot_scores


class BagOfWordsTower(nn.Module):
    """Masked mean of token embeddings -> Linear/tanh layers -> a linear output layer."""

    def __init__(self, vocab_size: int, pad_id: int, embedding_dim: int, hidden_dims: Sequence[int], output_dim: int):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        layers: list[nn.Module] = []
        width = embedding_dim
        for size in hidden_dims:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, output_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).to(self.embeddings.weight.dtype)  # (B, L, 1)
        summed = (self.embeddings(input_ids) * weights).sum(1)  # (B, E)
        return self.mlp(summed / weights.sum(1).clamp(min=1.0))  # (B, d)


class BowMLPEncoder(HFTokenized, Encoder):
    def __init__(
        self,
        tokenizer_name: str = "all-MiniLM-L6-v2",
        embedding_dim: int = 256,
        hidden_dims: Sequence[int] = (512,),
        output_dim: int = 256,
        shared: bool = True,
        normalize: bool = True,
        similarity: str = "dot",
        query_max_length: int = 64,
        doc_max_length: int = 256,
    ) -> None:
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"model.similarity must be dot or cosine, got {similarity!r}")
        sizes = {"embedding_dim": embedding_dim, "output_dim": output_dim, "query_max_length": query_max_length}
        sizes |= {"doc_max_length": doc_max_length} | {f"hidden_dims[{i}]": v for i, v in enumerate(hidden_dims)}
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"model.{key} must be >= 1, got {value}")
        self.tokenizer = load_tokenizer(tokenizer_name)
        pad = int(self.tokenizer.pad_token_id or 0)
        args = (len(self.tokenizer), pad, embedding_dim, list(hidden_dims), output_dim)
        self.query_tower = BagOfWordsTower(*args)
        self.doc_tower = self.query_tower if shared else BagOfWordsTower(*args)
        self.normalize, self.similarity = normalize, similarity
        self.query_max_length, self.doc_max_length = query_max_length, doc_max_length

    def _embed(self, tower: BagOfWordsTower, batch: Batch) -> torch.Tensor:
        vectors = tower(batch["input_ids"], batch["attention_mask"])  # (B, d)
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def encode_queries(self, batch: Batch) -> torch.Tensor:
        return self._embed(self.query_tower, batch)

    def encode_docs(self, batch: Batch) -> torch.Tensor:
        return self._embed(self.doc_tower, batch)

    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return cosine_scores(q, d) if self.similarity == "cosine" else dot_scores(q, d)
