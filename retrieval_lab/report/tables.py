"""The report as rows: one per job, with its swept overrides, status and metrics; written as Markdown and CSV."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from retrieval_lab.report.collect import Report
from retrieval_lab.report.significance import significance_markdown
from retrieval_lab.utils.io import atomic_write_text


def columns(report: Report) -> list[str]:
    return ["job", *report.swept, "status", *report.metrics, "note"]


def rows(report: Report) -> list[dict]:
    """One dict per job, keyed by :func:`columns`; a metric is None where the job has no value for it."""
    out = []
    for job in report.jobs:
        row: dict = {"job": job.label}
        row.update({key: job.value(key) for key in report.swept})
        row["status"] = job.status
        row.update({name: job.metric(report.split, name) for name in report.metrics})
        row["note"] = job.note
        out.append(row)
    return out


def mean_rows(report: Report) -> list[dict]:
    """Jobs that differ only in ``report.mean_over`` (e.g. seed) as one row: the other swept overrides, the
    ``mean_over`` values, ``n`` (finished jobs) and each metric as ``(mean, sample std or None when n < 2)``
    over the finished jobs (None when none finished), in the order the groups first appear."""
    over, keys = report.mean_over, report.factors
    out = []
    for values, jobs in report.arms().items():
        row: dict = dict(zip(keys, values, strict=True))
        row[over] = ",".join(job.value(over) for job in jobs)
        finished = [job for job in jobs if job.status == "ok"]
        row["n"] = len(finished)
        for name in report.metrics:
            xs = [x for job in finished if (x := job.metric(report.split, name)) is not None]
            row[name] = (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None) if xs else None
        out.append(row)
    return out


def _mean_cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def mean_markdown(report: Report) -> list[str]:
    """The ``mean_rows`` table as Markdown lines (best mean per metric bold)."""
    cols = [*report.factors, report.mean_over, "n", *report.metrics]
    table = _table_lines(cols, mean_rows(report), report.metrics, text=_mean_cell, value=lambda cell: cell[0])
    return [f"### Mean ± sample std over `{report.mean_over}`", "", *table]


def mean_csv(report: Report) -> str:
    """``mean_rows`` with each metric as two unrounded columns, ``<metric>`` (mean) and ``<metric>_std``."""
    keys = [*report.factors, report.mean_over, "n"]
    cols = [*keys, *(c for m in report.metrics for c in (m, f"{m}_std"))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in mean_rows(report):
        flat = {k: r[k] for k in keys}
        for m in report.metrics:
            mean, std = r[m] if r[m] is not None else (None, None)
            flat[m], flat[f"{m}_std"] = ("" if mean is None else mean), ("" if std is None else std)
        writer.writerow(flat)
    return buffer.getvalue()


def caption(report: Report) -> str:
    """What every job shares: dataset, split and constant overrides."""
    datasets = ", ".join(report.datasets) or "unknown dataset"
    failed = sum(job.status != "ok" for job in report.jobs)
    parts = [f"{len(report.jobs)} jobs ({failed} failed) on {datasets}, {report.split} split"]
    if report.constant:
        parts.append("constant overrides: " + " ".join(f"`{k}={v}`" for k, v in report.constant.items()))
    if report.swept:
        parts.append("swept: " + ", ".join(f"`{k}`" for k in report.swept))
    return "; ".join(parts) + "."


def _cell(value) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table_lines(cols: list[str], table: list[dict], metrics: list[str], text=_cell, value=lambda cell: cell):
    """Markdown table lines: ``text`` writes the metric cells, the others are ``_cell``; in each metric column the
    cells with the largest ``value`` are bold, unless every row ties. A missing metric (None) is never bold."""
    values = {m: {value(r[m]) for r in table if r[m] is not None} for m in metrics}
    best = {m: max(v) for m, v in values.items() if len(v) > 1}
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in table:
        cells = []
        for c in cols:
            cell = text(r[c]) if c in metrics else _cell(r[c])
            is_best = c in best and r[c] is not None and value(r[c]) == best[c]
            cells.append(f"**{cell}**" if is_best else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: Report, command: str | None = None) -> str:
    """A Markdown section: title, caption, the command that made it, and the table (best value per metric bold).

    The note column is left out when no job has a note.
    """
    table = rows(report)
    cols = [c for c in columns(report) if c != "note" or any(r["note"] for r in table)]
    lines = [f"## Sweep report: {', '.join(p.name or str(p) for p in report.sources)}", "", caption(report), ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += _table_lines(cols, table, report.metrics)
    if report.mean_over:
        lines += ["", *mean_markdown(report)]
    if report.baseline:
        lines += ["", *significance_markdown(report, report.baseline)]
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    """All columns, metrics unrounded, empty where missing; the same columns for every report of this shape."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(report), lineterminator="\n")
    writer.writeheader()
    for r in rows(report):
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buffer.getvalue()


def write_tables(report: Report, out_dir: Path, command: str | None = None) -> tuple[Path, Path]:
    md = atomic_write_text(Path(out_dir) / "report.md", to_markdown(report, command))
    csv_path = atomic_write_text(Path(out_dir) / "report.csv", to_csv(report))
    if report.mean_over:
        atomic_write_text(Path(out_dir) / "report_mean.csv", mean_csv(report))
    return md, csv_path
