"""Config schemas (structured configs) of the main groups: each option's YAML names its schema first in its
defaults list, so Hydra checks every key's type at composition and a wrong value (``retriever.k1=abc``) fails
there, naming the key, instead of as a TypeError inside a library minutes later. Registered in Hydra's
ConfigStore when ``retrieval_lab.conf`` is imported (which composing the lab's config does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class BM25RetrieverSchema:
    _target_: str = "retrieval_lab.retrievers.bm25.BM25Retriever"
    k1: float = 1.2
    b: float = 0.75
    method: str = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    show_progress: bool = True
    n_threads: int = 0


@dataclass
class DenseRetrieverSchema:
    _target_: str = "retrieval_lab.retrievers.dense.DenseRetriever"
    encoder: Any = None
    index_factory: str = "Flat"
    nprobe: int = 16
    ef_search: int = 128
    refine_k_factor: int = 4
    batch_size: int = 64
    query_batch_size: int = 256
    precision: str = "auto"
    device: str = "cpu"
    show_progress: bool = True
    cache_dir: str | None = None
    shard_across_ranks: bool = True


@dataclass
class BiEncoderSchema:
    _target_: str = "retrieval_lab.models.biencoder.BiEncoder"
    model_name: str = "all-MiniLM-L6-v2"
    pooling: str | None = None
    normalize: bool | None = None
    shared: bool = True
    projection_dim: int | None = None
    similarity: str = "dot"
    query_max_length: int | None = None
    doc_max_length: int | None = None
    query_prefix: str | None = None
    doc_prefix: str | None = None
    config_overrides: Any = None


@dataclass
class GradCacheSchema:
    chunk_size: int | None = None


@dataclass
class RetrievalModuleSchema:
    _target_: str = "retrieval_lab.training.module.RetrievalModule"
    _partial_: bool = True
    optimizer: Any = None  # a partial optimizer (torch.optim.AdamW by default); its own keys are its class's
    warmup_ratio: float = 0.1
    seed: int = 0
    grad_cache: GradCacheSchema = field(default_factory=GradCacheSchema)
    new_params_lr_scale: float = 1.0


@dataclass
class RetrievalDataModuleSchema:
    _target_: str = "retrieval_lab.training.datamodule.RetrievalDataModule"
    _partial_: bool = True
    batch_size: int = 32
    train_split: str = "train"
    dev_split: str = "dev"
    dev_size: int = 50
    dev_pool_top_k: int = 10
    min_relevance: int = 1
    ignore_identical_ids: bool = True
    num_workers: int = 0
    seed: int = 0
    show_progress: bool = True
    train_query_max_length: int | None = None
    train_doc_max_length: int | None = None
    batching: str = "random"
    cluster: Any = None  # checked by the data module, which names an unknown key


@dataclass
class TrainerSchema:
    _target_: str = "pytorch_lightning.Trainer"
    default_root_dir: str = "."
    accelerator: str = "cpu"
    devices: Any = 1  # a count, a list of device ids or "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int = 4
    max_steps: int = -1
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 1
    num_sanity_val_steps: int = 0
    use_distributed_sampler: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    deterministic: Any = None
    strategy: Any = "auto"
    plugins: Any = None
    limit_train_batches: Any = None


SCHEMAS = {
    ("retriever", "bm25"): BM25RetrieverSchema,
    ("retriever", "dense"): DenseRetrieverSchema,
    ("model", "biencoder"): BiEncoderSchema,
    ("module", "retrieval"): RetrievalModuleSchema,
    ("datamodule", "retrieval"): RetrievalDataModuleSchema,
    ("trainer", "cpu"): TrainerSchema,
}


def register() -> None:
    store = ConfigStore.instance()
    for (group, option), schema in SCHEMAS.items():
        store.store(group=group, name=f"schema_{option}", node=schema)
