"""The report as rows: one per job, with its swept overrides, status and metrics; written as Markdown and CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from retrieval_lab.report.collect import Report
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


def to_markdown(report: Report, command: str | None = None) -> str:
    """A Markdown section: title, caption, the command that made it, and the table (best value per metric bold).

    The note column is left out when no job has a note.
    """
    table = rows(report)
    cols = [c for c in columns(report) if c != "note" or any(r["note"] for r in table)]
    values = {m: {r[m] for r in table if r[m] is not None} for m in report.metrics}
    best = {m: max(v) for m, v in values.items() if len(v) > 1}  # no bold where every job ties
    lines = [f"## Sweep report: {', '.join(p.name or str(p) for p in report.sources)}", "", caption(report), ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in table:
        cells = []
        for c in cols:
            text = _cell(r[c])
            is_best = c in best and r[c] == best[c]
            cells.append(f"**{text}**" if is_best else text)
        lines.append("| " + " | ".join(cells) + " |")
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
    return md, csv_path
