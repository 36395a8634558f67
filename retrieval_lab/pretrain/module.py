"""``PretrainModule``: the retrieval module plus loss paths for MLM batches and RetroMAE batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.pretrain.mlm import MaskedLMHead, masked_lm_loss
from retrieval_lab.pretrain.retromae import RetroMAEHead
from retrieval_lab.training.module import RetrievalModule


def transformer_towers(encoder: Encoder, task: str) -> list[nn.Module]:
    """The distinct Hugging Face towers of a two-tower Transformer encoder (one when they are shared)."""
    towers = [getattr(encoder, "query_tower", None), getattr(encoder, "doc_tower", None)]
    if towers[0] is None or not hasattr(towers[0], "get_input_embeddings"):
        raise ValueError(f"pretrain_task={task} needs a Transformer encoder (model=biencoder or small_transformer), "
                         f"not {type(encoder).__name__}")  # fmt: skip
    return [towers[0]] if towers[1] is None or towers[1] is towers[0] else towers


class PretrainModule(RetrievalModule):
    """Pair batches go through the objective (InfoNCE over in-batch documents) as in fine-tuning; MLM batches
    (``{"mlm": ...}``) through an MLM head per tower, tied to that tower's word embeddings; RetroMAE batches
    (``{"retromae": ...}``) through a ``RetroMAEHead`` per tower (its decoder and its own tied MLM head). The
    heads are only for pre-training: the stage saves them beside the encoder's weights (``heads.pt``) so a
    stage can continue, and fine-tuning loads the encoder alone.
    """

    def __init__(
        self,
        encoder: Encoder,
        objective: nn.Module,
        optimizer: Callable,
        warmup_ratio: float = 0.1,
        seed: int = 0,
        masked_lm: bool = False,
        retromae: dict | None = None,
    ) -> None:
        super().__init__(encoder, objective, optimizer, warmup_ratio, seed)
        self.towers: list[nn.Module] = []
        self.mlm_heads = nn.ModuleList()
        if masked_lm:
            self.towers = transformer_towers(encoder, "mlm")
            self.mlm_heads.extend(MaskedLMHead(t.get_input_embeddings(), t.config.layer_norm_eps) for t in self.towers)
        self.retromae_heads = nn.ModuleList()
        if retromae is not None:  # {enhanced_decoding, sentence_pooling}
            self.retromae_heads.extend(RetroMAEHead(t, **retromae) for t in transformer_towers(encoder, "retromae"))

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """The pre-training heads' weights (not the encoder's): what ``heads.pt`` holds."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("encoder.", "objective."))}

    def load_heads_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.heads_state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise ValueError(f"pretrain_task.init_from={source}: its heads do not fit this task and model "
                             f"(saved {sorted(state)[:4]}..., expected {sorted(own)[:4]}...)")  # fmt: skip
        self.load_state_dict(state, strict=False)

    def forward(self, batch: dict[str, Batch]) -> torch.Tensor:
        if "retromae" in batch:
            return self._retromae_loss(batch["retromae"])
        if "mlm" not in batch:
            return super().forward(batch)
        mlm = batch["mlm"]
        losses = []
        for tower, head in zip(self.towers, self.mlm_heads, strict=True):
            hidden = tower(input_ids=mlm["input_ids"], attention_mask=mlm["attention_mask"]).last_hidden_state
            losses.append(masked_lm_loss(hidden, mlm["labels"], head))  # hidden: (B, L, H)
        return torch.stack(losses).mean()  # ()

    def _retromae_loss(self, batch: Batch) -> torch.Tensor:
        if not len(self.retromae_heads):
            raise RuntimeError("a RetroMAE batch reached a PretrainModule built without retromae heads")
        parts = torch.stack([torch.stack(head(batch)) for head in self.retromae_heads]).mean(0)  # (2,)
        self.parts = {"train/encoder_mlm_loss": parts[0].detach(), "train/decoder_loss": parts[1].detach()}
        return parts.sum()  # ()

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> torch.Tensor:
        self.parts: dict[str, torch.Tensor] = {}
        loss = super().training_step(batch, batch_idx)
        for name, value in self.parts.items():  # the loss's parts, where it has them (RetroMAE)
            self.log(name, value, batch_size=self.batch_size_of(batch))
        return loss

    def batch_size_of(self, batch: dict[str, Batch]) -> int:
        for kind in ("mlm", "retromae"):
            if kind in batch:
                return batch[kind]["input_ids"].shape[0]
        return super().batch_size_of(batch)
