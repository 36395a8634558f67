"""SG-OPT (Kim et al., ACL 2021, "Self-Guided Contrastive Learning for BERT Sentence Representations").

A trainable BERT_T (the encoder being trained; its embedding layer frozen) and a frozen copy BERT_F of the
starting weights. The anchor is BERT_T's [CLS] vector of a sentence; its positives are BERT_F's hidden layers of
the same sentence, each mean-pooled over tokens (one view per layer); the negatives are the other sentences'
layer views. Anchor and views go through one shared projection head (hidden -> 4096 -> 4096, GELU after each),
and a regulariser ``reg_lambda * ||theta_F - theta_T||^2`` keeps BERT_T near its start.

The loss (the SG-OPT form of NT-Xent, ``sg_opt_loss``): for sentence b and layer view l, the logit row is its
positive cos(a_b, v_{b,l}) followed by every negative of sentence b, cos(a_b, v_{c,k}) for c != b over all layers
k, all over the temperature; cross-entropy with the positive as target, averaged over the B x V (sentence, view)
pairs. Only the anchor's [CLS] is contrasted (the paper's "opt" variant drops the view-to-view terms).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.biencoder import pool


def sg_opt_loss(anchors: torch.Tensor, views: torch.Tensor, temperature: float) -> torch.Tensor:
    """anchors (B, P); views (B, V, P) of the same B sentences; cosine similarities over ``temperature``.

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> v = a.unsqueeze(1).repeat(1, 3, 1)  # every view equals its own anchor: perfect separation
    >>> bool(sg_opt_loss(a, v, 0.01) < 1e-6)
    True
    """
    b, n_views, _ = views.shape
    sim = torch.einsum("bp,cvp->bvc", F.normalize(anchors, dim=-1), F.normalize(views, dim=-1))  # (B, V, B)
    sim = sim / temperature
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    positives = sim.diagonal(dim1=0, dim2=2).T  # (B, V): sim[b, l, b]
    negatives = sim.masked_select(~eye.unsqueeze(1)).view(b, n_views * (b - 1))  # (B, V*(B-1)): c != b
    logits = torch.cat([positives.unsqueeze(-1), negatives.unsqueeze(1).expand(-1, n_views, -1)], dim=-1)
    logits = logits.reshape(b * n_views, 1 + n_views * (b - 1))  # (B*V, 1 + V*(B-1))
    target = torch.zeros(b * n_views, dtype=torch.long, device=sim.device)
    return F.cross_entropy(logits.float(), target)  # ()


class SelfGuidedContrastive(nn.Module):
    """``objective=self_guided``. ``bind(encoder)`` (called by the training module) copies the encoder's Transformer
    tower as BERT_F, freezes it and BERT_T's embedding layer, and sizes the projection head. The copy is a
    submodule, so checkpoints hold it and a resumed run keeps the original starting weights.
    """

    needs_batch = True  # BERT_F reads the tokenized sentences
    uses_docs = False  # one sentence per row: the module skips the document side

    def __init__(self, temperature: float = 0.01, reg_lambda: float = 0.1, projection_dim: int = 4096,
                 layer_min: int = 0, layer_max: int | None = None, freeze_embeddings: bool = True) -> None:  # fmt: skip
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"objective.temperature must be > 0, got {temperature}")
        if reg_lambda < 0:
            raise ValueError(f"objective.reg_lambda must be >= 0, got {reg_lambda}")
        if projection_dim < 1:
            raise ValueError(f"objective.projection_dim must be >= 1, got {projection_dim}")
        self.temperature, self.reg_lambda, self.projection_dim = temperature, reg_lambda, projection_dim
        self.layer_min, self.layer_max, self.freeze_embeddings = layer_min, layer_max, freeze_embeddings
        self._trainable: list[nn.Module] = []  # BERT_T, kept out of this module's parameters (the encoder owns it)
        self.frozen: nn.Module | None = None
        self.projection: nn.Module | None = None
        self.masked_share = None  # no label-aware masking: sentences are deduplicated, each row its own

    def bind(self, encoder) -> None:
        tower = getattr(encoder, "query_tower", None)
        if tower is None or not hasattr(tower, "config") or getattr(encoder, "doc_tower", tower) is not tower:
            raise ValueError("objective=self_guided needs a shared-tower Transformer encoder (model=biencoder)")
        raw_cls = getattr(encoder, "pooling", None) == "cls" and not getattr(encoder, "normalize", True)
        if not raw_cls or getattr(encoder, "projection", None) is not None:
            raise ValueError("objective=self_guided trains the raw [CLS] vector: set model.pooling=cls "
                             "model.normalize=false, no model.projection_dim (experiment=sgopt_stsb does)")  # fmt: skip
        self._trainable = [tower]
        self.frozen = copy.deepcopy(tower).eval().requires_grad_(False)
        if self.freeze_embeddings:
            tower.embeddings.requires_grad_(False)
        cfg = tower.config
        layers = cfg.num_hidden_layers + 1  # the embedding output and every layer's
        self.layer_max = layers if self.layer_max is None else self.layer_max
        if not 0 <= self.layer_min < self.layer_max <= layers:
            raise ValueError(f"objective.layer_min/layer_max must satisfy 0 <= min < max <= {layers}, got "
                             f"{self.layer_min}, {self.layer_max}")  # fmt: skip
        self.projection = nn.Sequential(nn.Linear(cfg.hidden_size, self.projection_dim), nn.GELU(),
                                        nn.Linear(self.projection_dim, self.projection_dim), nn.GELU())  # fmt: skip
        for layer in (self.projection[0], self.projection[2]):
            nn.init.normal_(layer.weight, std=cfg.initializer_range)
            nn.init.zeros_(layer.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen is not None:
            self.frozen.eval()  # BERT_F never drops out
        return self

    def layer_views(self, batch: dict) -> torch.Tensor:
        """BERT_F's hidden layers of each sentence, mean-pooled: (B, V, H)."""
        tokens = batch["queries"]
        with torch.no_grad():
            out = self.frozen(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                              output_hidden_states=True)  # fmt: skip
        layers = out.hidden_states[self.layer_min : self.layer_max]
        return torch.stack([pool(h, tokens["attention_mask"], "mean") for h in layers], dim=1)  # (B, V, H)

    def distance(self) -> torch.Tensor:
        """||theta_F - theta_T||^2 over the tower's parameters."""
        frozen = dict(self.frozen.named_parameters())
        return sum(((p - frozen[n]) ** 2).sum() for n, p in self._trainable[0].named_parameters())

    def forward(self, q: torch.Tensor, d, score=None, labels=None, batch: dict | None = None) -> torch.Tensor:
        """q: BERT_T's [CLS] vectors (B, H) from the module; ``batch`` for BERT_F's layer views."""
        if self.frozen is None or batch is None:
            raise RuntimeError("objective=self_guided must be bound to the encoder and given the batch")
        loss = sg_opt_loss(self.projection(q), self.projection(self.layer_views(batch)), self.temperature)
        return loss + self.reg_lambda * self.distance() if self.reg_lambda else loss
