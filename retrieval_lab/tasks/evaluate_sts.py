"""``task=evaluate_sts``: Spearman and Pearson correlation of an encoder's cosine similarities with STS gold scores.

    python -m retrieval_lab task=evaluate_sts data=stsb                  # MiniLM, mean pooling
    python -m retrieval_lab task=evaluate_sts data=sickr model.pooling=cls
    python -m retrieval_lab task=evaluate_sts data=stsb init_from=<run folder or checkpoint>

Every sentence is encoded once per split (document side, the encoder's document length), the pair's score is
the cosine of its two vectors. Writes ``metrics.json`` ``{split: {spearman, pearson, pairs}}`` and, per split,
``sts.<split>.tsv`` (gold score, predicted similarity, the two sentences) for re-scoring elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from retrieval_lab.data.sts import StsDataset, StsPair
from retrieval_lab.eval.sts import correlations, cosine_rows
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.loggers.setup import log_evaluation
from retrieval_lab.models.base import Encoder
from retrieval_lab.pretrain.stage import init_encoder
from retrieval_lab.tasks.evaluate import check_splits
from retrieval_lab.utils.instantiate import make
from retrieval_lab.utils.io import atomic_write_text, write_json

log = logging.getLogger(__name__)
SIDES = ("queries", "docs")


def score_pairs(encoder: Encoder, pairs: Sequence[StsPair], batch_size: int = 64, precision: str = "auto",
                side: str = "docs", show_progress: bool = False, device: str | None = None) -> np.ndarray:  # fmt: skip
    """The cosine similarity of each pair's two sentences, every distinct sentence encoded once."""
    sentences = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
    vectors = encode_texts(encoder, sentences, side, batch_size, precision, show_progress, device)  # (S, d)
    row = {s: i for i, s in enumerate(sentences)}
    first = vectors[[row[p.sentence1] for p in pairs]]  # (N, d)
    second = vectors[[row[p.sentence2] for p in pairs]]  # (N, d)
    return cosine_rows(first, second)  # (N,)


def evaluate_sts(encoder: Encoder, dataset: StsDataset, splits: Sequence[str], output_dir: str | Path | None = None,
                 name: str = "", **encode_args) -> dict[str, dict[str, float]]:  # fmt: skip
    """Correlations per split; with ``output_dir`` the per-pair predictions too, ``sts.[<name>.]<split>.tsv``."""
    results = {}
    for split in splits:
        pairs = dataset.splits[split]
        predicted = score_pairs(encoder, pairs, **encode_args)
        results[split] = correlations(predicted, np.array([p.score for p in pairs])) | {"pairs": len(pairs)}
        log.info("%s %s: %s", dataset.name, split, results[split])
        if output_dir is not None:
            rows = [f"{p.score}\t{s:.6f}\t{p.sentence1}\t{p.sentence2}" for p, s in zip(pairs, predicted, strict=True)]
            file = f"sts.{name}.{split}.tsv" if name else f"sts.{split}.tsv"
            atomic_write_text(Path(output_dir) / file, "\n".join(rows) + "\n")
    return results


def check_sts_args(splits: Sequence[str], side: str) -> None:
    if not splits:
        raise ValueError("task.splits is empty: name at least one split, e.g. [test]")
    if side not in SIDES:
        raise ValueError(f"task.side must be one of {SIDES}, got {side!r}")


def run(cfg: DictConfig, splits: Sequence[str], batch_size: int = 64, precision: str = "auto",
        side: str = "docs") -> dict:  # fmt: skip
    """Entry for ``task=evaluate_sts``."""

    check_sts_args(splits, side)
    dataset = make(cfg.data)
    if not isinstance(dataset, StsDataset):
        raise ValueError(f"task=evaluate_sts needs a sentence-similarity dataset (data=stsb|sickr), not "
                         f"{type(dataset).__name__} (data.name={cfg.data.get('name')})")  # fmt: skip
    check_splits(splits, dataset.splits, dataset.name)
    encoder = make(cfg.model)
    init_encoder(cfg, encoder)  # init_from or a pre-training stage, where set
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    results: dict = evaluate_sts(encoder, dataset, splits, output_dir, batch_size=batch_size, precision=precision,
                                 side=side)  # fmt: skip
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_json(output_dir / "metrics.json", results)
    log_evaluation(cfg, results, list(results))
    return results
