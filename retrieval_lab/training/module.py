"""``RetrievalModule``: an Encoder trained with an objective, AdamW with linear warm-up then linear decay."""

from __future__ import annotations

import functools
import logging
import math
import zlib
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from retrieval_lab.index.encode import attention_kernels
from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.training.grad_cache import grad_cache_loss, objective_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the bad step updates any weight."""


def warmup_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: 0 -> 1 over ``warmup_steps``, then 1 -> 0 at ``total_steps``.

    >>> f = warmup_linear_decay(2, 6)
    >>> [round(f(s), 2) for s in range(7)]
    [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def pad_tokens_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad token vectors ``(N, L, d)`` to the longest ``L`` of any rank, so objectives can all-gather them
    (zero rows are padding to MaxSim); a no-op outside DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    length = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    return F.pad(x, (0, 0, 0, int(length.item()) - x.shape[1]))  # (N, L_max, d)


class RetrievalModule(pl.LightningModule):
    """Encodes a batch's queries and documents, hands the vectors to the objective, steps AdamW.

    ``optimizer`` is a partial (``torch.optim.AdamW`` with its lr and weight decay). Weight decay skips
    biases and LayerNorm weights, as BERT fine-tuning does. The global RNG is re-seeded from
    (seed, step, rank) before every step, so dropout masks do not depend on whether the run was resumed.
    """

    def __init__(
        self,
        encoder: Encoder,
        objective: nn.Module,
        optimizer: Callable,
        warmup_ratio: float = 0.1,
        seed: int = 0,
        grad_cache: dict | None = None,
        new_params_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"module.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if not (isinstance(new_params_lr_scale, int | float) and new_params_lr_scale > 0):
            raise ValueError(f"module.new_params_lr_scale must be a positive number, got {new_params_lr_scale!r}")
        if new_params_lr_scale != 1 and "lr" not in getattr(optimizer, "keywords", {}):
            raise ValueError("module.new_params_lr_scale scales module.optimizer.lr, which is not set")
        chunk = (grad_cache or {}).get("chunk_size")
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"module.grad_cache.chunk_size must be a positive integer or null, got {chunk!r}")
        self.save_hyperparameters(ignore=["encoder", "objective", "optimizer", "grad_cache"])
        self.grad_cache_chunk: int | None = chunk
        self.gradient_clip_val: float | None = None  # with gradient caching the module clips (fit() passes it)
        if chunk is not None:
            self.automatic_optimization = False  # the step back-propagates chunk by chunk (training/grad_cache.py)
        self.encoder, self.objective, self.optimizer_factory = encoder, objective, optimizer
        self.warmup_ratio, self.seed, self.new_params_lr_scale = warmup_ratio, seed, float(new_params_lr_scale)
        if hasattr(objective, "bind"):  # objectives built around the encoder (SG-OPT's frozen copy)
            objective.bind(encoder)
        self.train()  # from_pretrained returns eval-mode modules; Lightning keeps modes, and dropout is wanted

    def forward(self, batch: dict[str, Batch]) -> torch.Tensor:
        """Objectives get vectors, the encoder's score function and the batch's labels (document keys, for
        false-negative masking); those with ``needs_batch`` (distillation from a teacher that tokenizes for
        itself) also get the tokenized batch."""
        if hasattr(self.encoder, "use_batch_context"):  # CDE: the batch's documents are the context
            self.encoder.use_batch_context(batch["docs"])
        q = self.encoder.encode_queries(batch["queries"])  # (B, d) or token vectors (B, Lq, d)
        if not getattr(self.objective, "uses_docs", True):  # one text per row (SG-OPT's sentences)
            return objective_loss(self.objective, q, None, self.encoder.score, batch)
        d = self.encoder.encode_docs(batch["docs"])  # (B * (1 + n), d) or (B * (1 + n), Ld, d)
        if self.encoder.multi_vector:
            d = pad_tokens_across_ranks(d)
        return objective_loss(self.objective, q, d, self.encoder.score, batch)  # ()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        torch.manual_seed(zlib.crc32(f"{self.seed}:{self.global_step}:{self.global_rank}".encode()))

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> torch.Tensor:
        with attention_kernels(self.device):  # on CUDA, no cuDNN attention: it rebuilds a graph per new length
            loss = self._cached_step(batch) if self.grad_cache_chunk else self(batch)
        self._check_finite(loss)
        if self.grad_cache_chunk:
            self._step_optimizer()
        self._log_step(batch, loss)
        return loss

    def _cached_step(self, batch: dict[str, Batch]) -> torch.Tensor:
        """The loss with its gradients already accumulated chunk by chunk (``module.grad_cache.chunk_size``)."""
        self.optimizers().zero_grad()
        if "queries" not in batch:  # pre-training's MLM / RetroMAE batches: a plain backward
            loss = self(batch)
            if torch.isfinite(loss):
                self.manual_backward(loss)
            return loss.detach()
        return grad_cache_loss(self.encoder, self.objective, batch, self.grad_cache_chunk, self.manual_backward)

    def _step_optimizer(self) -> None:
        optimizer = self.optimizers()
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()
        self.lr_schedulers().step()

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            saved = [cb.last_model_path for cb in self.trainer.checkpoint_callbacks if cb.last_model_path]
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.global_step}: stopping before this step updates "
                f"the weights. Last good checkpoint: {saved[0] if saved else 'none saved yet'}. "
                "Try a lower optimizer lr, a larger objective.temperature or trainer.gradient_clip_val."
            )

    def _log_step(self, batch: dict[str, Batch], loss: torch.Tensor) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size_of(batch))
        pairs = not batch.keys() & {"mlm", "retromae"}  # pre-training's MLM and RetroMAE batches skip the objective
        if (share := getattr(self.objective, "masked_share", None)) is not None and pairs:
            self.log("train/masked_share", share, batch_size=self.batch_size_of(batch))  # false negatives masked

    def batch_size_of(self, batch: dict[str, Batch]) -> int:
        """Examples in ``batch``, for logging; subclasses with other batch kinds (MLM) override it."""
        return batch["queries"]["input_ids"].shape[0]

    def setup(self, stage: str) -> None:
        """Before fit (and before a checkpoint is restored over it): encoders with freshly initialised layers
        may set them from training documents (ColBERT's ``model.projection_init=pca``)."""
        init = getattr(self.encoder, "init_new_parameters", None)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data = getattr(datamodule, "train_data", None)
        if stage != "fit" or init is None or not (hasattr(data, "examples") and hasattr(data, "corpus")):
            return
        order = torch.randperm(len(data.examples), generator=torch.Generator().manual_seed(self.seed))[:256]
        init([data.corpus[data.examples[i].positives[0]].full_text() for i in order.tolist()])

    def parameter_groups(self) -> list[dict]:
        """AdamW's groups: no weight decay on biases and LayerNorm weights (as BERT fine-tuning); with
        ``new_params_lr_scale`` != 1, the encoder's new parameters (``new_parameter_names``: ColBERT's random
        projection) in groups of their own at lr x that scale."""
        scaled = self.new_params_lr_scale != 1
        new = {f"encoder.{n}" for n in getattr(self.encoder, "new_parameter_names", list)()} if scaled else set()
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups.setdefault((name in new, param.ndim < 2 or "LayerNorm" in name), []).append(param)
        out = []
        for is_new, no_decay in sorted(groups):  # (old, decay), (old, no decay), then the new ones
            group = {"params": groups[is_new, no_decay]} | ({"weight_decay": 0.0} if no_decay else {})
            if is_new:
                group["lr"] = self.optimizer_factory.keywords["lr"] * self.new_params_lr_scale
            out.append(group)
        return out

    def _optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """The configured optimizer over ``groups``; a fused one (``module.optimizer.fused``) falls back to
        torch's default implementation where Lightning would refuse it: gradient clipping under mixed precision
        (the fused kernel unscales gradients itself, so Lightning cannot clip them first)."""
        factory = self.optimizer_factory
        keywords = getattr(factory, "keywords", {})
        mixed = "mixed" in str(self.trainer.precision) if self._trainer is not None else False
        clips = bool(self._trainer is not None and self.trainer.gradient_clip_val) or bool(self.gradient_clip_val)
        if keywords.get("fused") and mixed and clips:
            log.info("module.optimizer.fused: off under %s with gradient clipping (Lightning cannot clip a "
                     "fused optimizer's gradients): torch's default AdamW instead", self.trainer.precision)  # fmt: skip
            factory = functools.partial(factory.func, *factory.args, **{**keywords, "fused": None})
        return factory(groups)

    def configure_optimizers(self):
        optimizer = self._optimizer(self.parameter_groups())
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError("set trainer.max_steps or trainer.max_epochs: the schedule needs a finite length")
        schedule = warmup_linear_decay(int(self.warmup_ratio * total), int(total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
