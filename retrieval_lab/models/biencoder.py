"""Two-tower (DPR-style) encoder: shared or separate towers, CLS or mean pooling, optional projection."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from retrieval_lab.models.backbone import load_backbone, load_tokenizer
from retrieval_lab.models.base import Batch, Encoder, HFTokenized
from retrieval_lab.models.st_recipe import apply_recipe, read_recipe
from retrieval_lab.scoring.dense import cosine_scores, dot_scores

POOLINGS = ("mean", "cls")
SIMILARITIES = ("dot", "cosine")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states into one vector per sequence.

    >>> h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    >>> m = torch.tensor([[1, 1, 0]])
    >>> pool(h, m, "mean")
    tensor([[2., 3.]])
    >>> pool(h, m, "cls")
    tensor([[1., 2.]])
    """
    if how == "cls":
        return hidden[:, 0]  # (B, H)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, H)


DEFAULTS = {"pooling": "mean", "normalize": True, "query_max_length": 64, "doc_max_length": 256, "query_prefix": "",
            "doc_prefix": ""}  # fmt: skip


class BiEncoder(HFTokenized, Encoder):
    """Query and document towers over a Hugging Face encoder.

    ``model_name`` is any Hugging Face name or path, or ``all-MiniLM-L6-v2`` for the packaged copy.
    ``config_overrides`` builds a randomly initialised model of that architecture instead (tests, small
    from-scratch models). Settings left at None come from a sentence-transformers checkpoint's own recipe
    (``models/st_recipe.py``: pooling, normalisation, maximum length, prompts), else from ``DEFAULTS``.
    """

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        pooling: str | None = None,
        normalize: bool | None = None,
        shared: bool = True,
        projection_dim: int | None = None,
        similarity: str = "dot",
        query_max_length: int | None = None,
        doc_max_length: int | None = None,
        query_prefix: str | None = None,
        doc_prefix: str | None = None,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        given = {k: v for k, v in locals().items() if k in DEFAULTS}
        recipe = None if config_overrides else read_recipe(model_name)
        settings = apply_recipe(model_name, given, DEFAULTS, recipe)
        pooling, normalize = settings["pooling"], settings["normalize"]
        query_max_length, doc_max_length = settings["query_max_length"], settings["doc_max_length"]
        query_prefix, doc_prefix = settings["query_prefix"], settings["doc_prefix"]
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {pooling!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"model.similarity must be one of {SIMILARITIES}, got {similarity!r}")
        for key, value in (("query_max_length", query_max_length), ("doc_max_length", doc_max_length)):
            if value < 2:
                raise ValueError(f"model.{key} must be at least 2, got {value}")
        self.tokenizer = load_tokenizer(model_name)
        self.query_tower = load_backbone(model_name, config_overrides)
        self.doc_tower = self.query_tower if shared else copy.deepcopy(self.query_tower)
        hidden = self.query_tower.config.hidden_size
        dense = recipe.dense if recipe is not None else None
        if dense is not None and projection_dim not in (None, dense["out_features"]):
            raise ValueError(f"model.projection_dim={projection_dim}: {model_name} has a trained "
                             f"{dense['in_features']} -> {dense['out_features']} projection; leave "
                             "model.projection_dim at null to use it")  # fmt: skip
        if dense is not None:
            self.projection = nn.Linear(dense["in_features"], dense["out_features"], bias=dense["bias"])
            state = load_file(dense["weights"])
            self.projection.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        else:
            self.projection = nn.Linear(hidden, projection_dim) if projection_dim else None
        self.pooling, self.normalize, self.similarity = pooling, normalize, similarity
        self.query_max_length, self.doc_max_length = query_max_length, doc_max_length
        self.query_prefix, self.doc_prefix = query_prefix, doc_prefix

    def _embed(self, tower: nn.Module, batch: Batch) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = tower(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state  # (B, L, H)
        vectors = pool(hidden, mask, self.pooling)  # (B, H)
        if self.projection is not None:
            vectors = self.projection(vectors)  # (B, d)
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def encode_queries(self, batch: Batch) -> torch.Tensor:
        return self._embed(self.query_tower, batch)

    def encode_docs(self, batch: Batch) -> torch.Tensor:
        return self._embed(self.doc_tower, batch)

    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return cosine_scores(q, d) if self.similarity == "cosine" else dot_scores(q, d)
