"""Unlabeled sentences for self-supervised training (``datamodule=sentences``, SG-OPT), and the STS dev pairs that
choose the checkpoint.

The training sentences are the distinct sentences of the STS dataset's ``train_splits`` (by default STS-B's train
and dev pairs, their scores unused); test text stays out. Batches are whole global batches of a (seed, epoch)
permutation (``EpochShuffleSampler``, so a resumed run skips what it trained on), tokenized on the query side as
``{"queries": ...}`` (one text per row: no documents, no labels).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from retrieval_lab.data.sts import StsDataset, StsPair
from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.training.data import EpochShuffleSampler, ResumableData, ResumableLoader

log = logging.getLogger(__name__)


class Sentences(Dataset):
    def __init__(self, sentences: list[str]) -> None:
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, key: tuple[int, int]) -> str:
        return self.sentences[key[1]]


class SentenceCollator:
    def __init__(self, encoder: Encoder, max_length: int | None) -> None:
        self.tokenize, self.max_length = encoder.tokenize_queries, max_length

    def __call__(self, sentences: list[str]) -> dict[str, Batch]:
        return {"queries": dict(self.tokenize(sentences, max_length=self.max_length))}  # (B, L)


class SentenceDataModule(ResumableData, pl.LightningDataModule):
    """``dataset`` loads an ``StsDataset`` (``data=stsb``); ``negatives`` must be in-batch (none are drawn)."""

    def __init__(
        self,
        dataset: Callable[[], StsDataset],
        negatives=None,
        batch_size: int = 16,
        train_splits: Sequence[str] = ("train", "dev"),
        dev_split: str = "dev",
        max_length: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"datamodule.batch_size must be >= 2 (the other sentences are the negatives), got "
                             f"{batch_size}")  # fmt: skip
        if "test" in train_splits:
            raise ValueError("datamodule.train_splits must not hold test: its text stays out of training")
        if negatives is not None and getattr(negatives, "num_negatives", 0):
            raise ValueError("datamodule=sentences trains on in-batch negatives only: use negatives=in_batch")
        self.load_dataset, self.batch_size, self.train_splits = dataset, batch_size, list(train_splits)
        self.dev_split, self.max_length, self.num_workers, self.seed = dev_split, max_length, num_workers, seed
        self.sts: StsDataset | None = None
        self.train_data: Sentences | None = None
        self.collator: SentenceCollator | None = None

    def bind_encoder(self, encoder: Encoder) -> None:
        self.collator = SentenceCollator(encoder, self.max_length)

    @property
    def dev_pairs(self) -> list[StsPair]:
        if self.sts is None:
            raise RuntimeError("SentenceDataModule.setup() must run before its dev pairs are read")
        return self.sts.splits[self.dev_split]

    def setup(self, stage: str | None = None) -> None:
        if self.sts is not None:
            return
        sts = self.load_dataset()
        if not isinstance(sts, StsDataset):
            raise ValueError(f"datamodule=sentences reads a sentence-similarity dataset (data=stsb|sickr), not "
                             f"{type(sts).__name__}")  # fmt: skip
        missing = [s for s in [*self.train_splits, self.dev_split] if s not in sts.splits]
        if missing:
            raise ValueError(f"datamodule splits {missing} not in {sts.name} (has {sorted(sts.splits)})")
        pairs = [p for split in self.train_splits for p in sts.splits[split]]
        sentences = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
        self.sts, self.train_data = sts, Sentences(sentences)
        log.info("%d distinct training sentences from %s %s (scores unused); dev: %d %s pairs", len(sentences),
                 sts.name, self.train_splits, len(self.dev_pairs), self.dev_split)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        if self.collator is None:
            raise RuntimeError("SentenceDataModule.bind_encoder(encoder) must be called before training")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = EpochShuffleSampler(len(self.train_data), self.batch_size, self.seed, rank, world)
        return ResumableLoader(self.train_data, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collator,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               resume=self.pop_resume)  # fmt: skip

    def state_dict(self) -> dict:
        return self.resume_state()

    def load_state_dict(self, state_dict: dict) -> None:
        self.load_resume_state(state_dict)
