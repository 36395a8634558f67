"""Paired significance per query: each arm against a baseline arm, on the queries both were scored on.

An arm is the jobs that share every swept override but ``mean_over`` (its seeds); a query's value in an arm is
its mean over the arm's finished jobs, read from their ``per_query.<split>.json`` (written by the evaluation).
Where the jobs were not scored on one query set (the dev split is drawn per seed), each (seed, query) is one pair
instead: a job is paired with the baseline's job of the same seed, on the queries both scored.
The test is a two-sided paired randomization (sign-flip) test on the per-query differences, seeded, as
ranx's ``compare`` and trec_eval users run it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from retrieval_lab.report.collect import Job, Report, ReportError, parse_override


def paired_randomization_test(a: np.ndarray, b: np.ndarray, samples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of the mean paired difference ``b - a`` under random sign flips (with the +1
    correction, so never 0).

    >>> a = np.zeros(30); b = np.full(30, 0.1)
    >>> paired_randomization_test(a, b) < 0.001
    True
    >>> paired_randomization_test(a, a.copy())
    1.0
    """
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)  # (Q,)
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(samples, diff.size))  # (S, Q)
    extreme = np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12  # (S,)
    return float((extreme.sum() + 1) / (samples + 1))


def per_query(job: Job, split: str, metric: str) -> dict[str, float]:
    path = job.path / f"per_query.{split}.json"
    if not path.is_file():
        raise ReportError(f"{path}: missing; the paired test needs per-query values (re-run the evaluation)")
    values = json.loads(path.read_text())
    if metric not in values:
        raise ReportError(f"{path}: no {metric!r} (has {sorted(values)})")
    return values[metric]


def arm_values(jobs: list[Job], split: str, metric: str, by: str | None = None) -> dict[str, float]:
    """Each query's mean over the finished jobs of an arm (the queries every job scored); with ``by`` (the
    ``mean_over`` key) keyed ``<seed>/<query>`` instead, one value per job and query, nothing averaged."""
    finished = [job for job in jobs if job.status == "ok"]
    if by is not None:
        return {f"{job.value(by)}/{q}": v for job in finished for q, v in per_query(job, split, metric).items()}
    tables = [per_query(job, split, metric) for job in finished]
    if not tables:
        return {}
    common = set.intersection(*(set(t) for t in tables))
    return {q: sum(t[q] for t in tables) / len(tables) for q in common}


def pairing_key(report: Report) -> str | None:
    """``mean_over`` where the finished jobs were scored on different query sets (a per-seed dev split), so
    queries pair within a seed; None where every job scored the same queries (their seed means pair)."""
    if report.mean_over is None:
        return None
    metric = report.metrics[0]
    query_sets = {frozenset(per_query(job, report.split, metric)) for job in report.jobs if job.status == "ok"}
    return report.mean_over if len(query_sets) > 1 else None


@dataclass
class Comparison:
    arm: tuple[str, ...]
    metric: str
    delta: float  # mean over the common queries of arm - baseline
    p_value: float
    queries: int
    ahead: str = "-"  # "k/n": seeds (mean_over values) where the arm's run beats the baseline's of the same seed


def seeds_ahead(report: Report, arm_jobs: list[Job], base_jobs: list[Job], metric: str) -> str:
    """In how many of the shared ``mean_over`` values (seeds) the arm's job scores above the baseline's: the
    per-query test counts queries, so a gain one seed reverses still shows here."""
    if not report.mean_over:
        return "-"

    def by_seed(jobs: list[Job]) -> dict[str, float]:
        found = {j.value(report.mean_over): j.metric(report.split, metric) for j in jobs if j.status == "ok"}
        return {seed: v for seed, v in found.items() if v is not None}

    arm, base = by_seed(arm_jobs), by_seed(base_jobs)
    shared = sorted(set(arm) & set(base))
    return f"{sum(arm[s] > base[s] for s in shared)}/{len(shared)}" if shared else "-"


def compare_to_baseline(report: Report, baseline: str, by: str | None, samples: int = 10_000) -> list[Comparison]:
    """Every other arm against the arm whose ``KEY=VALUE`` is ``baseline``, per metric; ``by`` is
    ``pairing_key(report)`` (queries pair within each of its values, or None: across the arms' seed means)."""
    key, value = parse_override(baseline)
    if key not in report.factors:
        raise ReportError(f"--baseline {baseline}: {key!r} is not a swept override (those: {report.factors})")
    groups = report.arms()
    index = report.factors.index(key)
    base = [arm for arm in groups if arm[index] == value]
    if len(base) != 1:
        raise ReportError(f"--baseline {baseline}: matches {len(base)} arms, not one ({list(groups)})")
    out = []
    for metric in report.metrics:
        reference = arm_values(groups[base[0]], report.split, metric, by)
        for arm, jobs in groups.items():
            if arm == base[0]:
                continue
            values = arm_values(jobs, report.split, metric, by)
            common = sorted(set(values) & set(reference))
            if not common:
                continue
            a = np.array([reference[q] for q in common])
            b = np.array([values[q] for q in common])
            out.append(Comparison(arm, metric, float((b - a).mean()), paired_randomization_test(a, b, samples),
                                  len(common), seeds_ahead(report, jobs, groups[base[0]], metric)))  # fmt: skip
    return out


def significance_markdown(report: Report, baseline: str) -> list[str]:
    """A Markdown section: each arm's mean per-query difference to the baseline and its p-value."""
    by = pairing_key(report)  # computed once: it reads every job's per-query file
    rows = compare_to_baseline(report, baseline, by)
    lines = [f"### Paired randomization test per query against `{baseline}` ({report.split})", "",
             *([f"The jobs were scored on different queries (drawn per `{by}`): each pair is one query of one "
                f"`{by}`, the arm's job against the baseline's of the same `{by}`.", ""] if by else []),
             "| " + " | ".join([*report.factors, "metric", "Δ mean", "p", "queries", "seeds ahead"]) + " |",
             "|" + "|".join("---" for _ in range(len(report.factors) + 5)) + "|"]  # fmt: skip
    for r in rows:
        cells = [*r.arm, r.metric, f"{r.delta:+.4f}", f"{r.p_value:.4f}", str(r.queries), r.ahead]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
