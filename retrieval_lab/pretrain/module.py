"""``PretrainModule``: the retrieval module plus a masked-language-model loss path for MLM batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.pretrain.mlm import MaskedLMHead, masked_lm_loss
from retrieval_lab.training.module import RetrievalModule


def transformer_towers(encoder: Encoder) -> list[nn.Module]:
    """The distinct Hugging Face towers of a two-tower Transformer encoder (one when they are shared)."""
    towers = [getattr(encoder, "query_tower", None), getattr(encoder, "doc_tower", None)]
    if towers[0] is None or not hasattr(towers[0], "get_input_embeddings"):
        raise ValueError(f"pretrain_task=mlm needs a Transformer encoder (model=biencoder or small_transformer), "
                         f"not {type(encoder).__name__}")  # fmt: skip
    return [towers[0]] if towers[1] is None or towers[1] is towers[0] else towers


class PretrainModule(RetrievalModule):
    """Pair batches go through the objective (InfoNCE over in-batch documents) as in fine-tuning; MLM batches
    (``{"mlm": ...}``) through an MLM head per tower, tied to that tower's word embeddings. The heads are only
    for pre-training: the stage saves the encoder's weights alone.
    """

    def __init__(
        self,
        encoder: Encoder,
        objective: nn.Module,
        optimizer: Callable,
        warmup_ratio: float = 0.1,
        seed: int = 0,
        masked_lm: bool = False,
    ) -> None:
        super().__init__(encoder, objective, optimizer, warmup_ratio, seed)
        self.towers: list[nn.Module] = []
        self.mlm_heads = nn.ModuleList()
        if masked_lm:
            self.towers = transformer_towers(encoder)
            self.mlm_heads.extend(MaskedLMHead(t.get_input_embeddings(), t.config.layer_norm_eps) for t in self.towers)

    def forward(self, batch: dict[str, Batch]) -> torch.Tensor:
        if "mlm" not in batch:
            return super().forward(batch)
        mlm = batch["mlm"]
        losses = []
        for tower, head in zip(self.towers, self.mlm_heads, strict=True):
            hidden = tower(input_ids=mlm["input_ids"], attention_mask=mlm["attention_mask"]).last_hidden_state
            losses.append(masked_lm_loss(hidden, mlm["labels"], head))  # hidden: (B, L, H)
        return torch.stack(losses).mean()  # ()

    def batch_size_of(self, batch: dict[str, Batch]) -> int:
        return batch["mlm"]["input_ids"].shape[0] if "mlm" in batch else super().batch_size_of(batch)
