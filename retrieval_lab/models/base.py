"""The Encoder contract: objectives, evaluation and indexes only talk to this interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Encoder(nn.Module, ABC):
    """Turns tokenized queries and documents into vectors and scores them.

    ``encode_queries``/``encode_docs`` return ``(B, d)`` single vectors, or ``(B, L, d)`` token vectors for
    late-interaction models (which then read the batch's attention mask). ``score`` gives the ``(Bq, Bd)``
    score matrix.
    """

    query_max_length: int
    doc_max_length: int
    # True where encode_* return (B, L, d) token vectors, masked tokens as zero rows (models/colbert.py):
    # retrievers pick the multi-vector index and the training module keeps token lengths equal across ranks.
    multi_vector: bool = False

    @abstractmethod
    def tokenize_queries(self, texts: Sequence[str], padding: bool = True, max_length: int | None = None) -> Batch:
        """``max_length`` (default ``query_max_length``) lets training cut shorter than inference."""

    @abstractmethod
    def tokenize_docs(self, texts: Sequence[str], padding: bool = True, max_length: int | None = None) -> Batch:
        """``max_length`` (default ``doc_max_length``) lets training cut shorter than inference."""

    @abstractmethod
    def encode_queries(self, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def encode_docs(self, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor: ...

    @property
    def pad_token_id(self) -> int:
        return 0

    def encode(self, texts: Sequence[str], side: str = "docs", batch_size: int = 64, precision: str = "auto",
               show_progress: bool = False):  # fmt: skip
        """Vectors of ``texts`` as a numpy array ``(N, d)``, through the lab's one encoding path (eval mode, length-
        sorted batches, ``precision``); ``side`` picks the query or document tower and length."""
        from retrieval_lab.index.encode import encode_texts  # encode.py builds on this module

        return encode_texts(self, list(texts), side, batch_size, precision, show_progress)


class HFTokenized:
    """Mixin for encoders that tokenize with a Hugging Face tokenizer (``self.tokenizer``): the encoder's max
    lengths (``query_max_length``, ``doc_max_length``) and optional prefixes (``query_prefix``, ``doc_prefix``)."""

    query_prefix: str = ""
    doc_prefix: str = ""

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def _tokenize(self, texts: Sequence[str], prefix: str, max_length: int, padding: bool) -> Batch:
        return self.tokenizer([prefix + t for t in texts], max_length=max_length, truncation=True, padding=padding,
                              return_tensors="pt" if padding else None, return_token_type_ids=False)  # fmt: skip

    def tokenize_queries(self, texts: Sequence[str], padding: bool = True, max_length: int | None = None) -> Batch:
        return self._tokenize(texts, self.query_prefix, max_length or self.query_max_length, padding)

    def tokenize_docs(self, texts: Sequence[str], padding: bool = True, max_length: int | None = None) -> Batch:
        return self._tokenize(texts, self.doc_prefix, max_length or self.doc_max_length, padding)
