"""Sweep reports: ``python -m retrieval_lab.report DIR [DIR ...]`` turns Hydra multirun folders into a table
(``report.md``, ``report.csv``) and a figure (``report.png``), one row per job, failed jobs included."""

from retrieval_lab.report.collect import Job, Report, ReportError, build_report, collect_jobs
from retrieval_lab.report.figure import write_figure
from retrieval_lab.report.tables import to_csv, to_markdown, write_tables

__all__ = [
    "Job",
    "Report",
    "ReportError",
    "build_report",
    "collect_jobs",
    "to_csv",
    "to_markdown",
    "write_figure",
    "write_tables",
]
