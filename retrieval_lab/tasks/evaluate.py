"""``task=evaluate``: index the corpus with the configured retriever, rank each split's queries, score them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from retrieval_lab.data.beir import RetrievalDataset
from retrieval_lab.eval.metrics import checked_per_query_metrics, mean_metrics, parse_metric
from retrieval_lab.eval.trec import write_trec_run
from retrieval_lab.loggers.setup import log_evaluation
from retrieval_lab.models.base import Encoder
from retrieval_lab.pretrain.stage import init_encoder
from retrieval_lab.retrievers.base import Retriever
from retrieval_lab.utils.io import write_json

log = logging.getLogger(__name__)


def evaluate_retriever(
    retriever: Retriever,
    dataset: RetrievalDataset,
    splits: Sequence[str],
    metrics: Sequence[str],
    top_k: int,
    output_dir: str | Path | None = None,
    index: bool = True,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """Rank every split's queries and score them; writes ``run.<split>.trec`` and ``per_query.<split>.json``
    (``{metric: {qid: value}}``, for paired significance tests in the report) into ``output_dir`` if given, and
    ``expansions.<split>.json`` where the retriever rewrote the queries with an LLM (LameR, HyDE: prompts, answers).

    ``ignore_identical_ids`` drops a retrieved document whose id is the query's own, as BEIR's evaluator does
    (it matters where queries are documents too: ArguAna, Quora, CQADupStack)."""
    if index:
        retriever.index(dataset.corpus)
    results: dict[str, dict[str, float]] = {}
    for split in splits:
        run = retriever.search(dataset.split_queries(split), top_k)
        if ignore_identical_ids:
            run = {q: {d: v for d, v in docs.items() if d != q} for q, docs in run.items()}
        per_query = checked_per_query_metrics(dataset.qrels[split], run, metrics)
        if output_dir is not None:
            write_trec_run(run, Path(output_dir) / f"run.{split}.trec")
            write_json(Path(output_dir) / f"per_query.{split}.json", per_query)
            if expansions := getattr(retriever, "expansions", None):
                write_json(Path(output_dir) / f"expansions.{split}.json", expansions)
        results[split] = mean_metrics(per_query)
        log.info("%s %s: %s", dataset.name, split, results[split])
    return results


def retrieval_costs(retriever: Retriever) -> dict[str, float]:
    """What the retriever measured about itself (``timings``: corpus encoding, index build, search seconds per
    query; ``index_bytes``), for the ``retrieval`` entry of ``metrics.json``; empty where it measures nothing."""
    costs = {k: round(float(v), 6) for k, v in (getattr(retriever, "timings", None) or {}).items()}
    if getattr(retriever, "index_bytes", None):
        costs["index_bytes"] = int(retriever.index_bytes)
    if costs:
        log.info("retrieval costs: %s", costs)
    return costs


def check_splits(splits: Sequence[str], available, name: str) -> None:
    """Every asked split is in the dataset (``available``: its qrels or splits by name), or one clear error."""
    missing = [s for s in splits if s not in available]
    if missing:
        raise ValueError(f"task.splits {missing} not in dataset {name!r} (has {sorted(available)})")


def check_eval_args(splits: Sequence[str], metrics: Sequence[str], top_k: int, dev_only: bool = False) -> None:
    """Refuse bad ``task.*`` values before any data is read; ``dev_only``: an empty ``splits`` is allowed (a
    training run that ranks only its dev pool)."""
    if not splits and not dev_only:
        raise ValueError("task.splits is empty: name at least one qrels split, e.g. [test]")
    if top_k < 1:
        raise ValueError(f"task.top_k must be >= 1, got {top_k}")
    for name in metrics:
        _, k = parse_metric(name)
        if k > top_k:
            raise ValueError(f"task.metrics has {name} but task.top_k is {top_k}: raise task.top_k to >= {k}")


def retriever_encoders(retriever: Retriever) -> list[Encoder]:
    """The neural encoders a retriever ranks with: its own (dense, ColBERT) and those of the retrievers it wraps
    (a hybrid's sides, HyDE's dense retriever); none for BM25 and LameR."""
    found: list[Encoder] = []
    for name in ("encoder", "dense", "sparse"):
        part = getattr(retriever, name, None)
        if isinstance(part, Encoder):
            found.append(part)
        elif isinstance(part, Retriever):
            found += retriever_encoders(part)
    return found


def start_from(cfg: DictConfig, retriever: Retriever) -> None:
    """``init_from=<weights>`` or ``pretrain_task=<task>`` in an evaluation: the retriever's encoder starts from
    those weights (a pre-training stage's, a training run's dev-chosen checkpoint), as a training run's would;
    a retriever without an encoder refuses them rather than evaluating something else."""
    if not cfg.get("init_from") and cfg.get("pretrain_task") is None:
        return
    encoders = retriever_encoders(retriever)
    if not encoders:
        raise ValueError(f"init_from / pretrain_task is set, but {type(retriever).__name__} (retriever="
                         f"{cfg.retriever.get('_target_')}) has no encoder to load weights into")  # fmt: skip
    for encoder in encoders:
        init_encoder(cfg, encoder)


def run(
    cfg: DictConfig, splits: Sequence[str], metrics: Sequence[str], top_k: int, ignore_identical_ids: bool = True
) -> dict:
    """Entry for ``task=evaluate``; writes ``metrics.json`` and the TREC runs into ``paths.output_dir``."""
    check_eval_args(splits, metrics, top_k)
    output_dir = Path(cfg.paths.output_dir)
    dataset: RetrievalDataset = instantiate(cfg.data)
    if not isinstance(dataset, RetrievalDataset):
        raise ValueError(f"task=evaluate ranks a corpus; data.name={cfg.data.get('name')} is a "
                         f"{type(dataset).__name__}: use task=evaluate_sts for sentence similarity")  # fmt: skip
    check_splits(splits, dataset.qrels, dataset.name)
    retriever: Retriever = instantiate(cfg.retriever)
    start_from(cfg, retriever)
    start = time.perf_counter()
    results: dict = evaluate_retriever(
        retriever, dataset, splits, metrics, top_k, output_dir, ignore_identical_ids=ignore_identical_ids
    )
    log.info("Evaluation took %.1fs", time.perf_counter() - start)
    if costs := retrieval_costs(retriever):
        results["retrieval"] = costs
    write_json(output_dir / "metrics.json", results)
    log_evaluation(cfg, results, splits)
    return results
