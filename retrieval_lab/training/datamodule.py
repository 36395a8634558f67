"""``RetrievalDataModule``: training examples from a BEIR train split, a dev set, and the training loader."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Sampler

from retrieval_lab.data.beir import RetrievalDataset
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.models.base import Encoder
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.negatives.base import NegativeSampler
from retrieval_lab.retrievers.bm25 import BM25Retriever
from retrieval_lab.training.clusters import ORDERS, ClusterBatchSampler, ClusterOrders, bm25_svd_vectors
from retrieval_lab.training.data import (
    EpochShuffleSampler,
    ResumableData,
    ResumableLoader,
    TrainingCollator,
    TrainingExample,
    TrainingExamples,
)

log = logging.getLogger(__name__)


def positives_of(qrels: dict[str, dict[str, int]], min_relevance: int) -> dict[str, set[str]]:
    """Documents judged at or above ``min_relevance``; queries without one are left out."""
    found = {q: {d for d, r in docs.items() if r >= min_relevance} for q, docs in qrels.items()}
    return {q: docs for q, docs in found.items() if docs}


def dev_pool(dataset: RetrievalDataset, dev_qrels: dict, top_k: int, show_progress: bool) -> RetrievalDataset:
    """A small dataset for cheap dev evaluation: the dev queries rank a pool made of every dev query's BM25
    top-``top_k`` and every judged dev document, instead of the whole corpus (encoding SciFact's 5k abstracts
    takes minutes on CPU; the pool takes seconds). Pool scores are higher than full-corpus scores, but they
    move together, which is all checkpoint selection needs.
    """
    queries = {q: dataset.queries[q] for q in dev_qrels}
    retriever = BM25Retriever(show_progress=show_progress)
    retriever.index(dataset.corpus)
    keep = {d for docs in retriever.search(queries, top_k).values() for d in docs}
    keep |= {d for docs in dev_qrels.values() for d in docs}
    corpus = {d: doc for d, doc in dataset.corpus.items() if d in keep}
    return RetrievalDataset(name=f"{dataset.name}-dev-pool", corpus=corpus, queries=queries, qrels={"dev": dev_qrels})


class RetrievalDataModule(ResumableData, pl.LightningDataModule):
    """Loads the dataset in ``setup`` (never at construction), so config errors surface before any data is read.

    ``dataset`` is a callable returning a ``RetrievalDataset`` (the ``data`` config instantiated as a partial).
    The dev set is the dataset's ``dev_split`` where it has one, else a seeded slice of ``dev_size`` training
    queries held out from training.
    """

    def __init__(
        self,
        dataset: Callable[[], RetrievalDataset],
        negatives: NegativeSampler,
        batch_size: int = 32,
        train_split: str = "train",
        dev_split: str = "dev",
        dev_size: int = 50,
        dev_pool_top_k: int = 20,
        min_relevance: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        show_progress: bool = True,
        train_query_max_length: int | None = None,
        train_doc_max_length: int | None = None,
        ignore_identical_ids: bool = True,
        batching: str = "random",
        cluster: dict | None = None,
    ) -> None:
        super().__init__()
        if batching not in ("random", "cluster"):
            raise ValueError(f"datamodule.batching must be random or cluster, got {batching!r}")
        self.batching, self.cluster = batching, dict(cluster or {})
        unknown = set(self.cluster) - {"embedder", "order", "recluster", "niter", "svd_dims"}
        if unknown:
            raise ValueError(f"datamodule.cluster has unknown keys {sorted(unknown)}")
        if self.cluster.get("order", "random") not in ORDERS:
            raise ValueError(f"datamodule.cluster.order must be one of {ORDERS}, got {self.cluster['order']!r}")
        self.encoder: Encoder | None = None
        self.cluster_orders: ClusterOrders | None = None
        for key, value in (("train_query_max_length", train_query_max_length),
                           ("train_doc_max_length", train_doc_max_length)):  # fmt: skip
            if value is not None and value < 2:
                raise ValueError(f"datamodule.{key} must be at least 2 or null, got {value}")
        self.train_lengths = {"query_max_length": train_query_max_length, "doc_max_length": train_doc_max_length}
        for key, value in (("batch_size", batch_size), ("dev_size", dev_size), ("dev_pool_top_k", dev_pool_top_k)):
            if value < 1:
                raise ValueError(f"datamodule.{key} must be >= 1, got {value}")
        self.load_dataset, self.negatives = dataset, negatives
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_split, self.dev_split, self.dev_size = train_split, dev_split, dev_size
        self.dev_pool_top_k, self.min_relevance, self.show_progress = dev_pool_top_k, min_relevance, show_progress
        self.ignore_identical_ids = ignore_identical_ids
        self.dataset: RetrievalDataset | None = None
        self.train_data: TrainingExamples | None = None
        self.dev: RetrievalDataset | None = None
        self.collator: TrainingCollator | None = None

    def bind_encoder(self, encoder: Encoder) -> None:
        """Batches are tokenized with the encoder's contract (prefixes; max lengths unless train_* set them)."""
        self.collator = TrainingCollator(encoder, **self.train_lengths)
        self.encoder = encoder  # cluster batching embeds the training pairs with it (embedder: encoder)

    def _pair_vectors(self) -> np.ndarray:
        """One vector per training example: its query and first positive as one text, by the cluster embedder."""
        name = self.cluster.get("embedder", "encoder")
        data = self.train_data
        texts = [f"{data.queries[e.qid]} {data.corpus[e.positives[0]].full_text()}" for e in data.examples]
        if name == "bm25":
            return bm25_svd_vectors(texts, int(self.cluster.get("svd_dims", 128)), self.seed)
        encoder = self.encoder if name == "encoder" else BiEncoder(name)
        if encoder is None:
            raise RuntimeError("RetrievalDataModule.bind_encoder(encoder) must be called before cluster batching")
        return encode_texts(encoder, texts, "docs", show_progress=self.show_progress,
                            max_length=self.train_lengths["doc_max_length"])  # fmt: skip

    def _sampler(self, rank: int, world: int) -> Sampler:
        if self.batching == "random":
            return EpochShuffleSampler(len(self.train_data), self.batch_size, self.seed, rank, world)
        if self.cluster_orders is None:
            self.cluster_orders = ClusterOrders(
                self._pair_vectors, self.batch_size * world, self.seed, self.cluster.get("order", "random"),
                bool(self.cluster.get("recluster", False)), int(self.cluster.get("niter", 20)),
            )  # fmt: skip
        return ClusterBatchSampler(self.cluster_orders, len(self.train_data), self.batch_size, rank, world)

    def state_dict(self) -> dict:
        orders = {"cluster_orders": self.cluster_orders.state_dict()} if self.cluster_orders is not None else {}
        return self.resume_state() | orders

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run's cluster orders (applied when the loader is built) and its place in the epoch."""
        self._pending_orders = state_dict.get("cluster_orders")
        self.load_resume_state(state_dict)

    def _split_dev(self, train_qrels: dict, dataset: RetrievalDataset) -> tuple[dict, dict]:
        if self.dev_split in dataset.qrels:
            return train_qrels, dataset.qrels[self.dev_split]
        qids = sorted(train_qrels)
        if self.dev_size >= len(qids):
            raise ValueError(f"datamodule.dev_size {self.dev_size} leaves none of {len(qids)} train queries")
        held_out = set(random.Random(self.seed).sample(qids, self.dev_size))
        dev = {q: train_qrels[q] for q in qids if q in held_out}
        return {q: r for q, r in train_qrels.items() if q not in held_out}, dev

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        dataset = self.dataset = self.load_dataset()
        if self.train_split not in dataset.qrels:
            raise ValueError(
                f"dataset {dataset.name!r} has no {self.train_split!r} qrels (has {sorted(dataset.qrels)})"
            )
        train_qrels, dev_qrels = self._split_dev(dataset.qrels[self.train_split], dataset)
        positives = positives_of(train_qrels, self.min_relevance)
        if not positives:
            raise ValueError(f"no {self.train_split} query has a document with relevance >= {self.min_relevance}")
        queries = {q: dataset.queries[q] for q in positives}
        if hasattr(self.negatives, "use_dataset"):  # negatives=given: the dataset's own hard negatives
            self.negatives.use_dataset(dataset)
        self.negatives.prepare(dataset.corpus, queries, positives)
        relevant = positives_of(train_qrels, 1)  # every judged-relevant document is masked as a negative
        examples = [TrainingExample(q, tuple(sorted(positives[q])), tuple(sorted(relevant[q])),
                                    self.ignore_identical_ids) for q in queries]  # fmt: skip
        self.train_data = TrainingExamples(examples, dataset.queries, dataset.corpus, self.negatives, self.seed)
        self.dev = dev_pool(dataset, dev_qrels, self.dev_pool_top_k, self.show_progress)
        log.info(
            "%d training queries, %d dev queries ranking a pool of %d documents",
            len(examples),
            len(dev_qrels),
            len(self.dev.corpus),
        )

    def train_dataloader(self) -> DataLoader:
        if self.collator is None:
            raise RuntimeError("RetrievalDataModule.bind_encoder(encoder) must be called before training")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = self._sampler(rank, world)
        if (pending := getattr(self, "_pending_orders", None)) and self.cluster_orders is not None:
            self.cluster_orders.load_state_dict(pending)  # a resumed run: the orders (and clusters) it trained on
            self._pending_orders = None
        return ResumableLoader(  # a resumed run skips what it already trained on (see ResumableLoader)
            self.train_data,
            resume=self.pop_resume,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
