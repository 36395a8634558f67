"""The command line of ``python -m retrieval_lab.report``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from retrieval_lab.report.collect import ReportError, build_report
from retrieval_lab.report.figure import write_figure
from retrieval_lab.report.tables import write_tables

DEFAULT_METRICS = "ndcg@10,mrr@10,recall@100"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m retrieval_lab.report",
        description="Tables (report.md, report.csv) and a figure (report.png) from Hydra multirun folders: "
        "one row per job with the overrides that differ between jobs, its status and the chosen metrics.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="a multirun folder (or a single run folder)")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default {DEFAULT_METRICS})")
    p.add_argument("--split", default="test", help="the metrics.json split to report (default test)")
    p.add_argument("--mean-over", default=None, metavar="KEY",
                   help="also a table (and report_mean.csv) of the jobs that differ only in this swept override "
                   "(e.g. seed) averaged: mean ± sample std and n")  # fmt: skip
    p.add_argument("--baseline", default=None, metavar="KEY=VALUE",
                   help="a paired randomization test per query (per_query.<split>.json) of every arm against the "
                   "arm with this swept value (e.g. negatives=bm25); arms average their --mean-over jobs")  # fmt: skip
    p.add_argument("--ignore", default="", metavar="KEYS",
                   help="comma-separated swept overrides that do not tell arms apart (e.g. task.splits,ckpt_path "
                   "when some runs read test and others not, or one was resumed): shown per job, "
                   "not grouped by")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the first DIR)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        parser().error("--metrics is empty")
    out = args.out or args.dirs[0]
    command = "python -m retrieval_lab.report " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        ignore = [key.strip() for key in args.ignore.split(",") if key.strip()]
        report = build_report(args.dirs, metrics, args.split, args.mean_over, args.baseline, ignore)
        # report.md is made (paired tests included) before anything is written: a bad --baseline writes nothing
        md, csv_path = write_tables(report, out, command)
    except ReportError as err:
        parser().error(str(err))
    png = write_figure(report, out / "report.png")
    print(md.read_text(), end="")
    print(f"wrote {md}, {csv_path}, {png}")
    return 0
