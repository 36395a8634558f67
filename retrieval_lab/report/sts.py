"""Paired comparison of STS runs on the same pairs: each arm's Spearman against a baseline's, with a paired
bootstrap over pairs (Spearman is a corpus-level statistic, so there is no per-query value to sign-flip).

    python -m retrieval_lab.report.sts --baseline outputs/sts/minilm_stsb_mean/sts.test.tsv \\
        outputs/i16/sgopt_s42/sts.test.tsv outputs/i16/sgopt_s1/sts.test.tsv outputs/i16/sgopt_s2/sts.test.tsv

Reads the ``sts.<split>.tsv`` files that ``task=evaluate_sts`` and ``task=train_sts`` write (gold, predicted, the
two sentences); the files must hold the same pairs in the same order. Each pair resample scores both systems, so
the interval and p-value are of the difference on one set of pairs. Prints a Markdown table (``--out`` also writes
it to ``report_sts.md``) with every arm, the arms' mean ± sample std, and per arm the difference, its 95% interval
and the two-sided p-value.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, rankdata, spearmanr

from retrieval_lab.utils.io import atomic_write_text


@dataclass
class Predictions:
    path: Path
    gold: np.ndarray  # (N,)
    predicted: np.ndarray  # (N,)
    pairs: list[tuple[str, str]]


def read_predictions(path: str | Path) -> Predictions:
    path = Path(path)
    gold, predicted, pairs = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{path}:{n}: expected gold, predicted and two sentences (4 tab-separated fields)")
        try:
            gold.append(float(fields[0]))
            predicted.append(float(fields[1]))
        except ValueError:
            raise ValueError(f"{path}:{n}: gold and predicted must be numbers, got {fields[:2]}") from None
        pairs.append((fields[2], fields[3]))
    if len(gold) < 3:
        raise ValueError(f"{path}: {len(gold)} pairs; a correlation needs at least 3")
    return Predictions(path, np.array(gold), np.array(predicted), pairs)


def _rank_correlations(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Spearman of each row: (B, N) resampled gold and predictions -> (B,)."""
    a, b = rankdata(gold, axis=1), rankdata(predicted, axis=1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def paired_bootstrap(gold: np.ndarray, base: np.ndarray, arm: np.ndarray, samples: int = 10_000, seed: int = 0,
                     chunk: int = 500) -> tuple[float, tuple[float, float], float]:  # fmt: skip
    """Spearman(arm) - Spearman(base) over ``samples`` resamples of the pairs: (observed difference, 95%
    interval, two-sided p-value of "no difference", with the +1 correction so never 0).

    >>> rng = np.random.default_rng(0); gold = rng.normal(size=300)
    >>> good, bad = gold + rng.normal(scale=0.3, size=300), gold + rng.normal(scale=1.5, size=300)
    >>> diff, (low, high), p = paired_bootstrap(gold, bad, good, samples=2000)
    >>> diff > 0 and low > 0 and p < 0.01
    True
    """
    observed = spearmanr(gold, arm).statistic - spearmanr(gold, base).statistic
    rng, n, diffs = np.random.default_rng(seed), len(gold), []
    for start in range(0, samples, chunk):
        rows = rng.integers(0, n, size=(min(chunk, samples - start), n))  # (B, N)
        diffs.append(_rank_correlations(gold[rows], arm[rows]) - _rank_correlations(gold[rows], base[rows]))
    d = np.concatenate(diffs)
    low, high = np.quantile(d, [0.025, 0.975])
    p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (samples + 1), (np.sum(d >= 0) + 1) / (samples + 1)))
    return float(observed), (float(low), float(high)), float(p)


def compare(baseline: Predictions, arms: list[Predictions], samples: int = 10_000) -> str:
    rows = ["| run | Spearman | Pearson | Δ Spearman vs baseline | 95% interval | p (paired bootstrap) |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    base_s = spearmanr(baseline.gold, baseline.predicted).statistic
    rows.append(f"| {baseline.path} (baseline) | {base_s:.4f} | "
                f"{pearsonr(baseline.gold, baseline.predicted).statistic:.4f} | | | |")  # fmt: skip
    values = []
    for arm in arms:
        if arm.pairs != baseline.pairs or not np.array_equal(arm.gold, baseline.gold):
            raise ValueError(f"{arm.path} and {baseline.path} do not hold the same pairs in the same order")
        s = spearmanr(arm.gold, arm.predicted).statistic
        values.append(s)
        diff, (low, high), p = paired_bootstrap(arm.gold, baseline.predicted, arm.predicted, samples)
        rows.append(f"| {arm.path} | {s:.4f} | {pearsonr(arm.gold, arm.predicted).statistic:.4f} | {diff:+.4f} | "
                    f"[{low:+.4f}, {high:+.4f}] | {p:.4f} |")  # fmt: skip
    if len(values) > 1:
        rows.append(f"| arms: mean ± std (n={len(values)}) | {statistics.mean(values):.4f} ± "
                    f"{statistics.stdev(values):.4f} | | {statistics.mean(values) - base_s:+.4f} | | |")  # fmt: skip
    return "\n".join(rows) + f"\n\n{len(baseline.gold)} pairs; {samples} paired bootstrap resamples (seed 0).\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arms", nargs="+", help="sts.<split>.tsv files of the runs to compare")
    parser.add_argument("--baseline", required=True, help="the sts.<split>.tsv of the baseline run")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--out", default=None, help="a folder for report_sts.md")
    args = parser.parse_args(argv)
    table = compare(read_predictions(args.baseline), [read_predictions(a) for a in args.arms], args.samples)
    print(table)
    if args.out:
        atomic_write_text(Path(args.out) / "report_sts.md", table)


if __name__ == "__main__":
    main()
