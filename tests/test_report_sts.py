"""The paired STS comparison: bootstrap Spearman matches scipy, identical runs do not differ, a better run does,
and files that do not hold the same pairs (or are malformed) are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from retrieval_lab.report import sts


def write(path, gold, predicted, sentences=None):
    sentences = sentences or [(f"a{i}", f"b{i}") for i in range(len(gold))]
    path.write_text(
        "".join(f"{g}\t{p:.6f}\t{a}\t{b}\n" for g, p, (a, b) in zip(gold, predicted, sentences, strict=True))
    )
    return path


def test_row_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 5, size=(4, 50)).astype(float)  # ties, as STS scores have
    predicted = rng.normal(size=(4, 50))
    expected = [spearmanr(g, p).statistic for g, p in zip(gold, predicted, strict=True)]
    np.testing.assert_allclose(sts._rank_correlations(gold, predicted), expected, atol=1e-12)


def test_compare_identical_better_and_mismatched(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, size=200).round(1)
    base = write(tmp_path / "base.tsv", gold, gold + rng.normal(scale=2.0, size=200))
    same = write(tmp_path / "same.tsv", gold, np.loadtxt(base, usecols=1, delimiter="\t"))
    better = write(tmp_path / "better.tsv", gold, gold + rng.normal(scale=0.3, size=200))
    sts.main(["--baseline", str(base), str(same), str(better), "--samples", "2000", "--out", str(tmp_path / "r")])
    table = (tmp_path / "r" / "report_sts.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()}
    assert rows[str(same)][3] == "+0.0000" and float(rows[str(same)][5].strip(" |")) == 1.0
    assert (
        float(rows[str(better)][3]) > 0.3 and float(rows[str(better)][5].strip(" |")) < 0.002
    )  # 2 / 2001 is the smallest p that 2000 resamples give
    assert "mean ± std (n=2)" in table and table in capsys.readouterr().out
    other = write(tmp_path / "other.tsv", gold, gold, [(f"x{i}", "y") for i in range(200)])
    with pytest.raises(ValueError, match="same pairs"):
        sts.compare(sts.read_predictions(base), [sts.read_predictions(other)], samples=10)


def test_malformed_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("1.0\t0.5\ta\tb\n2.0\tx\ta\tb\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: gold and predicted must be numbers"):
        sts.read_predictions(bad)
    bad.write_text("1.0\t0.5\ta\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected"):
        sts.read_predictions(bad)
