"""The pre-training stream: examples generated on the fly from a linked corpus, seeded per example.

An example is keyed ``(epoch, batch, slot)``: the task of a global batch (for a ``Mix``) is drawn from
``random.Random(f"{seed}:{epoch}:{batch}")`` and the example itself from ``f"{seed}:{epoch}:{batch}:{slot}"``,
so the stream does not depend on worker count, and each DDP rank takes its own slots of every global batch.
Pair examples have the ``TrainingCollator`` layout (queries, then the positives; in-batch negatives only);
MLM and RetroMAE examples are tokenized and masked here (by the task's masker) and padded by the collator into
``{"mlm": {...}}`` or ``{"retromae": {...}}``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from retrieval_lab.data.wiki import LinkedCorpus
from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.objectives.masking import batch_labels
from retrieval_lab.pretrain.cropping import Cropper
from retrieval_lab.pretrain.mlm import IGNORE, mask_tokens
from retrieval_lab.pretrain.retromae import RetroMAEMasker, collate_retromae
from retrieval_lab.pretrain.tasks import (
    CropSource,
    MaskedLanguageModel,
    MaskedText,
    Mix,
    PretrainTask,
    RandomCropping,
    RetroMAE,
    subtasks,
)
from retrieval_lab.training.data import TrainingCollator

log = logging.getLogger(__name__)


class Masker:
    """Tokenizes a passage as a document and masks it; needs a WordPiece-style tokenizer with a mask token."""

    def __init__(self, encoder: Encoder, max_length: int | None, prob: float) -> None:
        tokenizer = getattr(encoder, "tokenizer", None)
        if tokenizer is None or tokenizer.mask_token_id is None:
            raise ValueError(
                f"pretrain_task=mlm needs a Transformer encoder with a mask token, not {type(encoder).__name__}"
            )
        self.tokenize, self.max_length, self.prob = encoder.tokenize_docs, max_length, prob
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, len(tokenizer)
        self.special = set(tokenizer.all_special_ids)

    def __call__(self, text: str, rng: random.Random) -> dict:
        ids = self.tokenize([text], padding=False, max_length=self.max_length)["input_ids"][0]
        masked, labels = mask_tokens(ids, self.special, self.mask_id, self.vocab_size, self.prob, rng)
        return {"mlm_input_ids": masked, "mlm_labels": labels}


class PretrainStream(Dataset):
    """Indexed by ``(epoch, batch, slot)`` keys from ``StreamSampler``; see the module docstring."""

    def __init__(self, task: PretrainTask | Mix, num_batches: int, seed: int) -> None:
        self.task, self.num_batches, self.seed = task, num_batches, seed
        self.maskers: dict[str, Callable[[str, random.Random], dict]] = {}  # task name -> its masker

    def __len__(self) -> int:
        return self.num_batches

    def task_of(self, epoch: int, batch: int) -> PretrainTask:
        if isinstance(self.task, Mix):
            return self.task.choose(random.Random(f"{self.seed}:{epoch}:{batch}"))
        return self.task

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, batch, slot = key
        rng = random.Random(f"{self.seed}:{epoch}:{batch}:{slot}")
        task = self.task_of(epoch, batch)
        example = task.sample(rng)
        if isinstance(example, MaskedText | CropSource):
            if task.name not in self.maskers:
                raise RuntimeError(f"PretrainDataModule.bind_encoder(encoder) must come before {task.name} batches")
            if isinstance(example, CropSource):  # two crops as token ids
                return self.maskers[task.name](example.text, example.group, rng)
            return self.maskers[task.name](example.text, rng)
        group = [example.group]  # the pair's key for false-negative masking (same article or target)
        return {"query": example.query, "positive": example.document.full_text(), "negatives": [],
                "doc_ids": group, "relevant": group}  # fmt: skip


class StreamSampler(Sampler):
    """``num_batches`` global batches an epoch; this rank's ``batch_size`` slots of each."""

    def __init__(self, num_batches: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_batches, self.batch_size, self.rank, self.world_size = num_batches, batch_size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for b in range(self.num_batches):
            start = self.rank * self.batch_size
            yield from ((self.epoch, b, start + j) for j in range(self.batch_size))

    def __len__(self) -> int:
        return self.num_batches * self.batch_size


class PretrainCollator:
    """Pair batches through ``TrainingCollator``; MLM batches padded into ``{"mlm": {input_ids, attention_mask,
    labels}}``, RetroMAE batches into ``{"retromae": {...}}``. A batch is of one kind (one task per batch)."""

    def __init__(self, encoder: Encoder, query_max_length: int | None, doc_max_length: int | None) -> None:
        self.pairs = TrainingCollator(encoder, query_max_length, doc_max_length)
        self.pad_id = encoder.pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, Batch]:
        if all("query" in it for it in items):
            return self.pairs(items)
        if all("retromae_ids" in it for it in items):
            return {"retromae": collate_retromae(items, self.pad_id)}
        if all("query_ids" in it for it in items):  # token-level pairs (cropping): padded as they are
            batch = {"queries": self._pad([it["query_ids"] for it in items]),
                     "docs": self._pad([it["positive_ids"] for it in items])}  # fmt: skip
            batch["labels"] = batch_labels([it["doc_ids"][0] for it in items], [it["relevant"] for it in items])
            return batch
        if not all("mlm_input_ids" in it for it in items):
            raise RuntimeError("a pre-training batch mixes examples of different tasks")
        width = max(len(it["mlm_input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)  # (B, L)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(items), width), dtype=torch.long)  # (B, L)
        for row, it in enumerate(items):
            n = len(it["mlm_input_ids"])
            ids[row, :n] = torch.tensor(it["mlm_input_ids"])
            labels[row, :n] = torch.tensor(it["mlm_labels"])
            mask[row, :n] = 1
        return {"mlm": {"input_ids": ids, "attention_mask": mask, "labels": labels}}

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask}


class PretrainDataModule(pl.LightningDataModule):
    """Reads the corpus in ``setup`` (``corpus`` is a loader callable), prepares the task, serves the stream.

    ``num_batches`` is the epoch length (the pre-training stage sets it to its step budget).
    """

    def __init__(
        self,
        corpus: Callable[[], LinkedCorpus],
        task: PretrainTask | Mix,
        batch_size: int = 64,
        num_batches: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
        query_max_length: int | None = None,
        doc_max_length: int | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("batch_size", batch_size), ("num_batches", num_batches)):
            if value < 1:
                raise ValueError(f"pretrain_task.{key} must be >= 1, got {value}")
        self.load_corpus, self.task, self.batch_size, self.seed = corpus, task, batch_size, seed
        self.num_workers, self.lengths = num_workers, (query_max_length, doc_max_length)
        self.stream = PretrainStream(task, num_batches, seed)
        self.collator: PretrainCollator | None = None
        self.corpus: LinkedCorpus | None = None

    def bind_encoder(self, encoder: Encoder) -> None:
        self.collator = PretrainCollator(encoder, *self.lengths)
        for task in subtasks(self.task):
            if isinstance(task, RetroMAE):
                self.stream.maskers[task.name] = RetroMAEMasker(
                    encoder, self.lengths[1], task.encoder_mask, task.decoder_mask, task.enhanced_decoding
                )
            elif isinstance(task, RandomCropping):
                self.stream.maskers[task.name] = Cropper(
                    encoder, task.chunk_length, task.ratio_min, task.ratio_max, task.delete_prob
                )
            elif isinstance(task, MaskedLanguageModel):
                self.stream.maskers[task.name] = Masker(encoder, self.lengths[1], task.mask_prob)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        self.corpus = self.load_corpus()
        self.task.prepare(self.corpus)
        log.info("pre-training %s on %s (%d articles)", self.task.name, self.corpus.name, len(self.corpus.articles))

    def train_dataloader(self) -> DataLoader:
        if self.collator is None:
            raise RuntimeError("PretrainDataModule.bind_encoder(encoder) must be called before training")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = StreamSampler(self.stream.num_batches, self.batch_size, rank, world)
        return DataLoader(self.stream, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)  # fmt: skip
