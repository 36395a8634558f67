"""Training examples, a resumable epoch-seeded sampler and the tokenizing collator.

Everything random about an example (which positive, which negatives) is drawn from a ``random.Random``
seeded by (seed, epoch, example index), and the order of an epoch from (seed, epoch). A run resumed from a
checkpoint therefore sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset, Sampler

from retrieval_lab.data.beir import Document
from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.negatives.base import NegativeSampler
from retrieval_lab.objectives.masking import batch_labels


@dataclass(frozen=True)
class TrainingExample:
    qid: str
    positives: tuple[str, ...]  # the documents a positive is drawn from
    relevant: tuple[str, ...] = ()  # every document judged relevant (masked as a negative); () = the positives
    ignore_identical_id: bool = True  # the document whose id is the query's is never its negative (BEIR's rule)

    @property
    def labelled(self) -> tuple[str, ...]:
        return self.relevant or self.positives

    @property
    def excluded(self) -> set[str]:
        """What the negative sampler must not return: the labelled documents, and the query's own id."""
        return set(self.labelled) | ({self.qid} if self.ignore_identical_id else set())


class TrainingExamples(Dataset):
    """Indexed by ``(epoch, i[, batch])`` keys from ``EpochShuffleSampler``; returns one training example's texts."""

    def __init__(
        self,
        examples: list[TrainingExample],
        queries: dict[str, str],
        corpus: dict[str, Document],
        negatives: NegativeSampler,
        seed: int,
    ) -> None:
        self.examples, self.queries, self.corpus = examples, queries, corpus
        self.negatives, self.seed = negatives, seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int] | tuple[int, int, int]) -> dict:
        epoch, index, *batch = key  # the samplers add the global batch number (ANN tables are chosen by it)
        example = self.examples[index]
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        positive = rng.choice(example.positives)
        negative_ids = self.negatives.sample_at(example.qid, example.excluded, rng, batch[0] if batch else None)
        return {
            "query": self.queries[example.qid],
            "positive": self.corpus[positive].full_text(),
            "negatives": [self.corpus[d].full_text() for d in negative_ids],
            "doc_ids": [positive, *negative_ids],
            "relevant": list(example.labelled),
        }


class EpochShuffleSampler(Sampler):
    """Yields ``(epoch, index, batch)`` keys: a (seed, epoch) permutation cut into whole global batches, this rank's
    share of each; ``batch`` counts global batches over the whole run (epoch x batches per epoch + b).
    ``set_epoch`` is called by Lightning at every epoch start; ``skip_batches`` drops the batches a resumed run
    already trained on (once, for the epoch it resumes in).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_batches = num_examples // (batch_size * world_size)
        if self.num_batches < 1:
            raise ValueError(
                f"{num_examples} training examples do not fill one global batch of {batch_size} x {world_size} "
                "ranks: lower datamodule.batch_size"
            )
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, n: int) -> None:
        self._skip = n % self.num_batches

    def __iter__(self):
        order = list(range(self.num_examples))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        skip, self._skip = self._skip, 0
        for b in range(skip, self.num_batches):
            start = (b * self.world_size + self.rank) * self.batch_size
            batch = self.epoch * self.num_batches + b  # counted over the whole run
            yield from ((self.epoch, i, batch) for i in order[start : start + self.batch_size])

    def __len__(self) -> int:
        return self.num_batches * self.batch_size


class ResumableLoader(DataLoader):
    """A training loader that resumes mid-epoch exactly. The data module's checkpoint state records the batches
    trained on (``ResumableData``); on resume, the first iteration makes the sampler skip those of the resumed
    epoch. Lightning's own route (a loader ``state_dict``) does not work here: it builds the loader and would
    hand back the state before restoring the loops whenever ``configure_optimizers`` reads
    ``estimated_stepping_batches``, so the state was dropped and a resumed epoch replayed its first batches."""

    def __init__(self, *args, resume: Callable[[], int | None] = lambda: None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume = resume

    def __iter__(self):
        if (done := self._resume()) is not None:
            self.sampler.skip_batches(done)  # taken by the sampler's first batch, not by an iter() that reads none
        return super().__iter__()


class ResumableData:
    """Mixin for a ``LightningDataModule`` whose loader is a ``ResumableLoader``: its checkpoint state holds the
    batches trained on, handed to the loader once after a restore."""

    _resume_batches: int | None = None

    def resume_state(self) -> dict:
        trainer = self.trainer
        return {"batches_done": trainer.global_step * trainer.accumulate_grad_batches} if trainer else {}

    def load_resume_state(self, state: dict) -> None:
        self._resume_batches = state.get("batches_done")

    def pop_resume(self) -> int | None:
        done, self._resume_batches = self._resume_batches, None
        return done


class TrainingCollator:
    """Tokenizes with the encoder's contract (max lengths, prefixes). Documents come as the B positives
    (row i belongs to query i) followed by each query's negatives, the layout the objectives expect. Items with
    ``doc_ids`` (positive first, then negatives) and ``relevant`` ids also give the batch its ``labels``
    (``objectives/masking.batch_labels``), which the objectives use to mask false negatives.
    ``query_max_length``/``doc_max_length`` cut training texts shorter than the encoder's inference lengths
    (cheaper steps), never longer; None keeps the encoder's.
    """

    def __init__(self, encoder: Encoder, query_max_length: int | None = None, doc_max_length: int | None = None):
        self.tokenize_queries, self.tokenize_docs = encoder.tokenize_queries, encoder.tokenize_docs
        self.query_max_length = min(query_max_length or encoder.query_max_length, encoder.query_max_length)
        self.doc_max_length = min(doc_max_length or encoder.doc_max_length, encoder.doc_max_length)

    def __call__(self, items: list[dict]) -> dict[str, Batch]:
        docs = [it["positive"] for it in items] + [text for it in items for text in it["negatives"]]
        queries = [it["query"] for it in items]
        batch = {
            "queries": dict(self.tokenize_queries(queries, max_length=self.query_max_length)),  # (B, Lq)
            "docs": dict(self.tokenize_docs(docs, max_length=self.doc_max_length)),  # (B * (1 + n), Ld)
        }
        if all("doc_ids" in it for it in items):
            doc_ids = [it["doc_ids"][0] for it in items] + [d for it in items for d in it["doc_ids"][1:]]
            batch["labels"] = batch_labels(doc_ids, [it["relevant"] for it in items])  # (B * (1 + n),), (B, P)
        return batch
