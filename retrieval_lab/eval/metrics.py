"""The lab's one metric implementation, on top of pytrec_eval (the C trec_eval).

Metric names follow the ``name@k`` convention: ``ndcg@10``, ``mrr@10``, ``recall@100``, ``map@100``,
``precision@5``, ``success@1`` (the share of queries with a relevant document in the top k: ReQA's R@k, where
trec_eval's recall@1 caps at 1/n for a query with n relevant documents). Every judged query with at least one
relevant document counts; a query the run does not answer scores 0 (trec_eval alone would skip it and inflate
the mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytrec_eval

from retrieval_lab.eval.trec import Run

DEFAULT_METRICS = (
    "ndcg@10",
    "mrr@10",
    "recall@1",
    "recall@5",
    "recall@10",
    "recall@20",
    "recall@100",
    "map@100",
)
# our name -> (trec_eval measure family, the per-query key pattern it reports)
_TREC_NAMES = {
    "ndcg": ("ndcg_cut", "ndcg_cut_{k}"),
    "recall": ("recall", "recall_{k}"),
    "map": ("map_cut", "map_cut_{k}"),
    "precision": ("P", "P_{k}"),
    "mrr": ("recip_rank", "recip_rank"),
    "success": ("success", "success_{k}"),  # a relevant document within the top k (ReQA's R@k, a hit rate)
}


def parse_metric(name: str) -> tuple[str, int]:
    """Split ``"ndcg@10"`` into ``("ndcg", 10)``; unknown names are an error naming the known ones."""
    base, _, cutoff = name.partition("@")
    if base not in _TREC_NAMES or not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"unknown metric {name!r}: use <name>@<k> with name in {sorted(_TREC_NAMES)}")
    return base, int(cutoff)


def _truncate(run: Run, k: int) -> Run:
    # trec_eval's recip_rank has no cut-off, so MRR@k scores the run cut to its top k.
    return {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:k]) for q, docs in run.items()}


def per_query_metrics(qrels: dict[str, dict[str, int]], run: Run, metrics: Sequence[str]) -> dict[str, dict]:
    """``{metric: {qid: value}}`` over every query with a relevant document."""
    judged = {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    parsed = {name: parse_metric(name) for name in metrics}
    # One trec_eval pass for everything with a native cut-off, one per MRR depth on the truncated run.
    passes: dict[int | None, set[str]] = {}
    for base, k in parsed.values():
        family = _TREC_NAMES[base][0]
        passes.setdefault(k if base == "mrr" else None, set()).add(family if base == "mrr" else f"{family}.{k}")
    reported: dict[int | None, dict] = {}
    for depth, measures in passes.items():
        scored = run if depth is None else _truncate(run, depth)
        evaluator = pytrec_eval.RelevanceEvaluator(judged, measures)
        reported[depth] = evaluator.evaluate({q: scored[q] for q in judged if scored.get(q)})
    results: dict[str, dict[str, float]] = {}
    for name, (base, k) in parsed.items():
        per_query = reported[k if base == "mrr" else None]
        key = _TREC_NAMES[base][1].format(k=k)
        results[name] = {q: per_query.get(q, {}).get(key, 0.0) for q in judged}
    return results


def evaluate_run(
    qrels: dict[str, dict[str, int]], run: Run, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """Mean of each metric over the judged queries, rounded to 5 digits."""
    return mean_metrics(checked_per_query_metrics(qrels, run, metrics))


def checked_per_query_metrics(qrels: dict[str, dict[str, int]], run: Run, metrics: Sequence[str]) -> dict[str, dict]:
    """``per_query_metrics``, refusing qrels without a relevant document."""
    if not any(any(r > 0 for r in docs.values()) for docs in qrels.values()):
        raise ValueError("qrels hold no relevant document: nothing to evaluate")
    return per_query_metrics(qrels, run, metrics)


def mean_metrics(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the queries, rounded to 5 digits."""
    return {name: round(sum(v.values()) / len(v), 5) for name, v in per_query.items()}
