"""``model=cde``: the two-stage contextual document encoder of CDE (Morris & Rush, 2024).

Stage 1 (a bi-encoder, ``first_stage``) embeds ``context_size`` documents of the corpus. Stage 2 (the backbone)
reads those embeddings, projected to its width, as extra input vectors before the text's tokens, with no position
information, and pools the text tokens only. Queries and documents both go through stage 2 with the same context.

Where the context comes from:
- training (``RetrievalModule.forward`` calls ``use_batch_context``): the batch's first ``context_size``
  documents, embedded by stage 1 with gradient, so stage 1 trains through stage 2;
- evaluation (``DenseRetriever.index`` calls ``use_corpus``): ``context_size`` documents of the evaluated corpus,
  sampled with ``context_seed``, embedded once per corpus without gradient.

Sequence dropout (training only): each context vector is replaced by a learned null vector with probability
``sequence_dropout``. With no context (``clear_context``) stage 2 is a plain bi-encoder over the backbone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.backbone import load_backbone, load_tokenizer
from retrieval_lab.models.base import Batch, Encoder, HFTokenized
from retrieval_lab.models.biencoder import BiEncoder, pool
from retrieval_lab.scoring.dense import dot_scores


class ContextualEncoder(HFTokenized, Encoder):
    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        first_stage: str | None = None,
        context_size: int = 32,
        context_seed: int = 0,
        sequence_dropout: float = 0.0,
        query_max_length: int = 64,
        doc_max_length: int = 256,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"model.context_size must be >= 1, got {context_size}")
        if not 0 <= sequence_dropout <= 1:
            raise ValueError(f"model.sequence_dropout must be in [0, 1], got {sequence_dropout}")
        self.first = BiEncoder(first_stage or model_name, doc_max_length=doc_max_length,
                               config_overrides=None if first_stage else config_overrides)  # fmt: skip
        self.tokenizer = load_tokenizer(model_name)
        self.backbone = load_backbone(model_name, config_overrides)
        hidden = self.backbone.config.hidden_size
        first_dim = self.first.query_tower.config.hidden_size
        self.context_projection = nn.Linear(first_dim, hidden)
        self.null_context = nn.Parameter(torch.zeros(hidden))
        self.context_size, self.context_seed, self.sequence_dropout = context_size, context_seed, sequence_dropout
        self.query_max_length, self.doc_max_length = query_max_length, doc_max_length
        self.context: torch.Tensor | None = None  # (C, first_dim): stage-1 vectors of the current context

    # --- the context ------------------------------------------------------------------------------------------

    def context_tokens(self, docs: Batch) -> Batch:
        """The batch's first ``context_size`` documents tokenized for stage 1 (decoded from stage 2's ids)."""
        ids = docs["input_ids"][: self.context_size]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return {k: v.to(ids.device) for k, v in self.first.tokenize_docs(texts).items()}

    def use_batch_context(self, docs: Batch) -> None:
        """Training: the batch's first ``context_size`` documents, embedded by stage 1 with gradient."""
        self.context = self.first.encode_docs(self.context_tokens(docs))  # (C, first_dim)

    @torch.no_grad()
    def use_corpus(self, texts: Sequence[str], batch_size: int = 64) -> None:
        """Evaluation: ``context_size`` documents of the corpus, sampled with ``context_seed``, embedded once."""
        picked = random.Random(self.context_seed).sample(list(texts), min(self.context_size, len(texts)))
        device = self.null_context.device
        parts = []
        for i in range(0, len(picked), batch_size):
            tokens = {k: v.to(device) for k, v in self.first.tokenize_docs(picked[i : i + batch_size]).items()}
            parts.append(self.first.encode_docs(tokens))
        self.context = torch.cat(parts)  # (C, first_dim)

    def clear_context(self) -> None:
        self.context = None

    def context_vectors(self, rows: int) -> torch.Tensor | None:
        """(B, C, hidden): the projected context for ``rows`` texts; in training each vector is replaced by the null
        vector with probability ``sequence_dropout``."""
        if self.context is None or not len(self.context):
            return None
        ctx = self.context_projection(self.context.to(self.null_context.dtype))  # (C, hidden)
        if self.training and self.sequence_dropout > 0:
            dropped = torch.rand(ctx.shape[0], device=ctx.device) < self.sequence_dropout  # (C,)
            ctx = torch.where(dropped[:, None], self.null_context.expand_as(ctx), ctx)
        return ctx.unsqueeze(0).expand(rows, -1, -1)  # (B, C, hidden)

    # --- stage 2 ------------------------------------------------------------------------------------------------

    def _embed(self, batch: Batch) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        ctx = self.context_vectors(ids.shape[0])
        if ctx is None:
            hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, hidden)
            return F.normalize(pool(hidden, mask, "mean"), dim=-1)
        c = ctx.shape[1]
        emb = self.backbone.embeddings
        # The embedding layer adds position and type embeddings to inputs_embeds: context slots get position 0 and
        # have those two subtracted in advance, so they enter with no position information; text keeps 0..L-1.
        offset = emb.position_embeddings.weight[0] + emb.token_type_embeddings.weight[0]  # (hidden,)
        inputs = torch.cat([ctx - offset, emb.word_embeddings(ids)], dim=1)  # (B, C + L, hidden)
        positions = torch.cat([torch.zeros(c, dtype=torch.long, device=ids.device),
                               torch.arange(ids.shape[1], device=ids.device)]).expand(ids.shape[0], -1)  # fmt: skip
        full_mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, c), mask], dim=1)  # (B, C + L)
        hidden = self.backbone(inputs_embeds=inputs, attention_mask=full_mask, position_ids=positions).last_hidden_state
        return F.normalize(pool(hidden[:, c:], mask, "mean"), dim=-1)  # the text tokens only

    def encode_queries(self, batch: Batch) -> torch.Tensor:
        return self._embed(batch)

    def encode_docs(self, batch: Batch) -> torch.Tensor:
        return self._embed(batch)

    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return dot_scores(q, d)
