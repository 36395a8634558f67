"""``python -m retrieval_lab.report`` over fake multirun folders written by the tests (no training)."""

from __future__ import annotations

import csv
import json
from itertools import product
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from retrieval_lab.report import ReportError, build_report
from retrieval_lab.report.cli import main
from retrieval_lab.report.figure import draw, heat_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPERIMENT = "experiment=dpr_scifact_negatives"


def write_job(root: Path, num: int, overrides: list[str], metrics: dict | None, log: str = "") -> Path:
    """One Hydra job folder as a multirun writes it; ``metrics=None`` is a job that failed."""
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    choices = {"task": "train", "data": "scifact", "model": "biencoder", "negatives": "bm25", "experiment": "null"}
    config = {"data": {"name": "scifact"}, "model": {"pooling": "mean"}, "trainer": {"lr": 5e-5}}
    for text in overrides:
        key, _, value = text.partition("=")
        if key in choices:
            choices[key] = value
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "train.log").write_text(log)
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"test": metrics, "train": {"steps": 40}}))
    return job


def write_scored_job(root: Path, num: int, arm: str, seed: str, values: dict[str, float]) -> Path:
    """A finished job of ``arm`` and ``seed`` with per-query test nDCG@10 ``values`` (their mean as the metric)."""
    job = write_job(root, num, [f"arm={arm}", f"seed={seed}"], {"ndcg@10": sum(values.values()) / len(values)})
    (job / "per_query.test.json").write_text(json.dumps({"ndcg@10": values}))
    return job


# negatives x model.pooling; the (bm25, cls) job failed
GRID = {
    ("in_batch", "mean"): {"ndcg@10": 0.61, "mrr@10": 0.57, "recall@100": 0.91},
    ("in_batch", "cls"): {"ndcg@10": 0.59, "mrr@10": 0.55, "recall@100": 0.90},
    ("bm25", "mean"): {"ndcg@10": 0.69, "mrr@10": 0.64, "recall@100": 0.95},
    ("bm25", "cls"): None,
}
FAILED_LOG = "[2026-11-22 08:00:00,000][retrieval_lab.train][ERROR] - CUDA out of memory\n"


@pytest.fixture
def grid_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for num, (negatives, pooling) in enumerate(product(["in_batch", "bm25"], ["mean", "cls"])):
        overrides = [f"negatives={negatives}", f"model.pooling={pooling}", EXPERIMENT]
        metrics = GRID[(negatives, pooling)]
        write_job(root, num, overrides, metrics, log="" if metrics else FAILED_LOG)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return root


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "lr_sweep"
    for num, (lr, ndcg) in enumerate([("1e-4", 0.66), ("1e-5", 0.62), ("3e-5", 0.68)]):
        write_job(root, num, [f"trainer.lr={lr}", EXPERIMENT], {"ndcg@10": ndcg, "recall@100": 0.9})
    return root


def read_png(path: Path):
    assert path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path)


def test_two_swept_parameters_give_one_row_per_job(grid_sweep: Path, capsys):
    assert main([str(grid_sweep), "--metrics", "ndcg@10,recall@100"]) == 0
    with (grid_sweep / "report.csv").open() as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == ["job", "negatives", "model.pooling", "status", "ndcg@10", "recall@100", "note"]
    assert [(r["job"], r["negatives"], r["model.pooling"], r["status"]) for r in table] == [
        ("0", "in_batch", "mean", "ok"),
        ("1", "in_batch", "cls", "ok"),
        ("2", "bm25", "mean", "ok"),
        ("3", "bm25", "cls", "failed"),
    ]
    assert [float(r["ndcg@10"]) for r in table[:3]] == [0.61, 0.59, 0.69]
    assert table[3]["ndcg@10"] == table[3]["recall@100"] == ""
    assert table[3]["note"] == "CUDA out of memory"

    md = (grid_sweep / "report.md").read_text()
    assert "`experiment=dpr_scifact_negatives`" in md and "scifact" in md  # constant override in the caption
    header, rule, *body = [line for line in md.splitlines() if line.startswith("|")]
    assert header == "| job | negatives | model.pooling | status | ndcg@10 | recall@100 | note |"
    assert len(body) == 4 and rule.count("---") == 7
    assert body[2].startswith("| 2 | bm25 | mean | ok | **0.690** | **0.950** |")
    assert body[3] == "| 3 | bm25 | cls | failed | – | – | CUDA out of memory |"
    assert "| job | negatives" in capsys.readouterr().out

    image = read_png(grid_sweep / "report.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert not list(grid_sweep.glob(".report*"))  # no temporary files left behind


def test_categorical_figure_is_bars_with_legend_and_titles(grid_sweep: Path):
    report = build_report([grid_sweep], ["ndcg@10", "recall@100"])
    fig = draw(report)
    assert len(fig.axes) == 6  # 2 metrics x (2 swept overrides + the grid's heat map)
    axes = [ax for ax in fig.axes if not ax.get_images()]
    assert len(axes) == 4
    for ax in axes:
        assert "scifact" in ax.get_title() and ax.get_xlabel() in ("negatives", "model.pooling")
        assert len(ax.patches) == 3  # three finished jobs, one bar each
        assert [t.get_text() for t in ax.texts if t.get_text() == "failed"] == ["failed"]
        assert len(ax.get_legend().get_texts()) == 2
    assert axes[0].get_title().startswith("ndcg@10") and axes[2].get_title().startswith("recall@100")
    assert "failed (not plotted): 3" in fig.get_suptitle()


def test_a_two_override_grid_gets_a_heat_map_of_cell_means(grid_sweep: Path, tmp_path: Path):
    seeds = tmp_path / "seeds"  # the grid again under a second seed: cells average their two jobs
    for num, (negatives, pooling) in enumerate(product(["in_batch", "bm25"], ["mean", "cls"])):
        metrics = GRID[(negatives, pooling)]
        later = None if metrics is None else {k: v + 0.02 for k, v in metrics.items()}
        write_job(seeds, num, [f"negatives={negatives}", f"model.pooling={pooling}", EXPERIMENT], later)
    report = build_report([grid_sweep, seeds], ["ndcg@10", "recall@100"])
    rows, cols, grid = heat_grid(report, "ndcg@10")
    assert (rows, cols) == (report.levels("negatives"), report.levels("model.pooling"))
    expected = {("in_batch", "mean"): 0.62, ("in_batch", "cls"): 0.60, ("bm25", "mean"): 0.70}
    for (negatives, pooling), value in expected.items():
        assert grid[rows.index(negatives), cols.index(pooling)] == pytest.approx(value)
    assert np.isnan(grid[rows.index("bm25"), cols.index("cls")])  # failed in both: an empty cell
    fig = draw(report)
    heat = [ax for ax in fig.axes if ax.get_images()]
    assert len(heat) == 2 and heat[0].get_title().startswith("ndcg@10")
    assert (heat[0].get_ylabel(), heat[0].get_xlabel()) == ("negatives", "model.pooling")
    assert sorted(t.get_text() for t in heat[0].texts) == sorted(["0.620", "0.600", "0.700", "–"])
    assert len(draw(build_report([grid_sweep], ["ndcg@10"])).axes) == 3  # one metric: bars, bars, heat map


def test_numeric_sweep_is_a_line_over_sorted_values(lr_sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert main([str(lr_sweep), "--metrics", "ndcg@10", "--out", str(out)]) == 0
    report = build_report([lr_sweep], ["ndcg@10"])
    assert report.swept == ["trainer.lr"] and report.constant == {"experiment": "dpr_scifact_negatives"}
    assert report.is_numeric("trainer.lr") and report.levels("trainer.lr") == ["1e-5", "3e-5", "1e-4"]
    (ax,) = draw(report).axes
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1e-5, 3e-5, 1e-4] and list(line.get_ydata()) == [0.62, 0.68, 0.66]
    assert ax.get_legend() is None  # a single series
    read_png(out / "report.png")
    assert (out / "report.md").exists() and not (lr_sweep / "report.md").exists()


def test_baseline_run_next_to_a_sweep_takes_its_values_from_its_config(grid_sweep: Path, tmp_path: Path):
    baseline = write_job(tmp_path / "runs", 0, [], {"ndcg@10": 0.64, "mrr@10": 0.6, "recall@100": 0.92})
    report = build_report([grid_sweep, baseline], ["ndcg@10"])
    assert report.jobs[-1].label == "0" and report.jobs[0].label == "sweep/0"
    assert report.swept == ["negatives", "model.pooling", "experiment"]
    assert [report.jobs[-1].value(k) for k in report.swept] == ["bm25", "mean", "null"]


def test_unknown_metric_or_folder_is_a_clear_error(grid_sweep: Path, tmp_path: Path):
    with pytest.raises(ReportError, match=r"\['ndcg@20'\] not in the 'test' results \(available: \['ndcg@10'"):
        build_report([grid_sweep], ["ndcg@20"])
    with pytest.raises(ReportError, match="no Hydra job folders"):
        build_report([tmp_path], ["ndcg@10"])
    with pytest.raises(SystemExit):
        main([str(grid_sweep), "--split", "dev"])


def test_mean_over_seed_averages_jobs_that_differ_only_in_seed(tmp_path: Path, capsys):
    root = tmp_path / "seeds"
    runs = [("in_batch", "0", 0.60), ("in_batch", "1", 0.64), ("bm25", "0", 0.70), ("bm25", "1", None)]
    for num, (negatives, seed, ndcg) in enumerate(runs):
        metrics = None if ndcg is None else {"ndcg@10": ndcg, "recall@100": 0.9}
        write_job(root, num, [f"negatives={negatives}", f"seed={seed}"], metrics, log="" if metrics else FAILED_LOG)
    assert main([str(root), "--metrics", "ndcg@10,recall@100", "--mean-over", "seed"]) == 0
    out = capsys.readouterr().out
    assert "### Mean ± sample std over `seed`" in out
    assert "| in_batch | 0,1 | 2 | 0.620 ± 0.028 | 0.900 ± 0.000 |" in out  # std of 0.60, 0.64; ties not bold
    assert "| bm25 | 0,1 | 1 | **0.700** | 0.900 |" in out  # the failed seed is left out of the mean
    with (root / "report_mean.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["negatives"] for r in rows] == ["in_batch", "bm25"]
    assert float(rows[0]["ndcg@10"]) == pytest.approx(0.62) and float(rows[0]["ndcg@10_std"]) == pytest.approx(
        0.0283, abs=1e-4
    )
    assert rows[1]["n"] == "1" and rows[1]["ndcg@10_std"] == ""
    assert read_png(root / "report.png").shape[1] > 0
    with pytest.raises(ReportError, match=r"--mean-over trainer.lr: not an override that differs"):
        build_report([root], ["ndcg@10"], mean_over="trainer.lr")


def test_baseline_gives_a_paired_test_per_query_over_the_seed_means(tmp_path: Path, capsys):
    # 40 queries; "masked" beats "plain" by 0.05 on every query in both seeds (p tiny); "noisy" differs from
    # "plain" by +-0.05 alternating (mean difference 0: p = 1)
    root = tmp_path / "arms"
    qids = [f"q{i}" for i in range(40)]
    base = {q: 0.3 + 0.01 * (i % 7) for i, q in enumerate(qids)}
    arms = {
        "plain": lambda i, v: v,
        "masked": lambda i, v: v + 0.05,
        "noisy": lambda i, v: v + (0.05 if i % 2 else -0.05),
    }
    num = 0
    for arm, shift in arms.items():
        for seed in ("0", "1"):
            write_scored_job(root, num, arm, seed, {q: shift(i, base[q]) for i, q in enumerate(qids)})
            num += 1
    assert main([str(root), "--metrics", "ndcg@10", "--mean-over", "seed", "--baseline", "arm=plain"]) == 0
    out = capsys.readouterr().out
    assert "### Paired randomization test per query against `arm=plain` (test)" in out
    assert "| masked | ndcg@10 | +0.0500 | 0.0001 | 40 | 2/2 |" in out  # 1 / 10,001: no sign flip is as extreme
    assert "| noisy | ndcg@10 | +0.0000 | 1.0000 | 40 | 0/2 |" in out  # equal run means: ahead in no seed
    with pytest.raises(SystemExit):
        main([str(root), "--metrics", "ndcg@10", "--mean-over", "seed", "--baseline", "arm=absent"])
    (root / "0" / "per_query.test.json").unlink()
    with pytest.raises(SystemExit):
        main([str(root), "--metrics", "ndcg@10", "--mean-over", "seed", "--baseline", "arm=plain"])


def test_a_boolean_left_at_its_default_reads_as_its_override_would(tmp_path: Path):
    # one job overrides objective.mask=false, the other keeps the config's True: the arms are "true" and "false"
    root = tmp_path / "bools"
    for num, overrides in enumerate([[], ["objective.mask=false"]]):
        job = write_job(root, num, overrides, {"ndcg@10": 0.5})
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        config["objective"] = {"mask": num == 0}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    report = build_report([root], ["ndcg@10"])
    assert [job.value("objective.mask") for job in report.jobs] == ["true", "false"]


def test_ignored_overrides_do_not_split_arms_and_booleans_match_however_written(tmp_path: Path, capsys):
    # a sweep (task.splits=[], Hydra's capitalised False) beside a baseline run that read test and was resumed:
    # with --ignore the baseline's seeds form one arm; without it the resume path splits them apart
    root = tmp_path / "mixed"
    jobs = [(["lr=5e-05", "seed=0", "task.splits=[]", "quiet=False"], 0.50), (["lr=5e-05", "seed=1", "task.splits=[]",
            "quiet=False"], 0.52), (["lr=0.0001", "seed=0", "quiet=false", "ckpt_path=last.ckpt"], 0.60),
            (["lr=0.0001", "seed=1", "quiet=false"], 0.62)]  # fmt: skip
    for num, (overrides, ndcg) in enumerate(jobs):
        write_job(root, num, overrides, {"ndcg@10": ndcg})
    report = build_report([root], ["ndcg@10"], mean_over="seed", ignore=["task.splits", "ckpt_path"])
    assert "quiet" not in report.swept and report.factors == ["lr"]
    assert [len(seeds) for seeds in report.arms().values()] == [2, 2]
    assert main([str(root), "--metrics", "ndcg@10", "--mean-over", "seed", "--ignore", "task.splits,ckpt_path"]) == 0
    assert "| 0.0001 | 0,1 | 2 | **0.610 ± 0.014** |" in capsys.readouterr().out
    assert len(build_report([root], ["ndcg@10"], mean_over="seed").arms()) == 3  # the resume path splits lr 1e-4
    with pytest.raises(ReportError, match=r"--ignore model.pooling: not overrides that differ"):
        build_report([root], ["ndcg@10"], ignore=["model.pooling"])


def test_dev_queries_drawn_per_seed_pair_within_each_seed(tmp_path: Path, capsys):
    # seed 0 scored q0..q19, seed 1 q20..q39 (a per-seed dev split): no query is common to an arm's seeds, so
    # pairs are (seed, query); "better" is +0.1 on seed 0's queries and +0.0 on seed 1's
    root = tmp_path / "dev"
    num = 0
    for arm, seed in product(["plain", "better"], ["0", "1"]):
        qids = [f"q{i}" for i in range(20)] if seed == "0" else [f"q{i}" for i in range(20, 40)]
        gain = 0.1 if arm == "better" and seed == "0" else 0.0
        write_scored_job(root, num, arm, seed, {q: 0.5 + 0.01 * (i % 5) + gain for i, q in enumerate(qids)})
        num += 1
    assert main([str(root), "--metrics", "ndcg@10", "--mean-over", "seed", "--baseline", "arm=plain"]) == 0
    out = capsys.readouterr().out
    assert "each pair is one query of one `seed`" in out
    assert "| better | ndcg@10 | +0.0500 | " in out and "| 40 | 1/2 |" in out  # 40 pairs, the mean of +0.1 and 0
