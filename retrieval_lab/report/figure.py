"""The report's figure: each metric against each swept override, one series per value of the other swept overrides.

Numeric sweeps (every value parses as a number) are lines over the sorted values; categorical sweeps are grouped
bars, labelled with their values. A sweep of exactly two overrides (a grid, e.g. RetroMAE's encoder x decoder
masks) also gets a heat map per metric: one cell per pair of values, the mean of its jobs written in it. Failed
jobs are not plotted; a bar chart marks their slot "failed", a heat map leaves the cell empty ("–"). Drawn on
matplotlib's Agg canvas directly (no pyplot, no display needed) and written atomically.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from retrieval_lab.report.collect import Report
from retrieval_lab.utils.io import atomic_file

JOB_AXIS = "job"  # the x axis when nothing is swept: one bar per job


def _x_value(report: Report, job, param: str) -> str:
    return job.label if param == JOB_AXIS else job.value(param)


def series_points(report: Report, metric: str, param: str) -> dict[tuple[str, ...], dict[str, list[float | None]]]:
    """``{other overrides' values: {x value: [metric of each job there, None if it failed]}}``."""
    others = [k for k in report.factors if k != param]
    points: dict = defaultdict(lambda: defaultdict(list))
    for job in report.jobs:
        key = tuple(job.value(k) for k in others)
        points[key][_x_value(report, job, param)].append(job.metric(report.split, metric))
    return points


def _mean(values: list[float | None]) -> float | None:
    done = [v for v in values if v is not None]
    return sum(done) / len(done) if done else None


def _series_label(report: Report, param: str, key: tuple[str, ...]) -> str:
    others = [k for k in report.factors if k != param]
    if len(others) == 1:
        return key[0]
    return ", ".join(f"{k}={v}" for k, v in zip(others, key, strict=True))


def _legend(ax: Axes, report: Report, param: str, n_series: int) -> None:
    if n_series > 1:
        others = [k for k in report.factors if k != param]
        title = others[0] if len(others) == 1 else None
        ax.legend(title=title, fontsize="small", title_fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_lines(ax: Axes, report: Report, metric: str, param: str) -> None:
    levels = report.levels(param)
    xs_all = [float(v) for v in levels]
    points = series_points(report, metric, param)
    for key, by_x in points.items():
        pairs = [(float(x), _mean(by_x[x])) for x in levels if x in by_x]
        pairs = [(x, y) for x, y in pairs if y is not None]
        if pairs:
            ax.plot(*zip(*pairs, strict=True), marker="o", label=_series_label(report, param, key))
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
        ax.set_xscale("log")
    ax.set_xticks(xs_all, levels)
    _legend(ax, report, param, len(points))


def plot_bars(ax: Axes, report: Report, metric: str, param: str) -> float:
    """Grouped bars; returns the highest value drawn (to leave room for the value labels)."""
    levels = [job.label for job in report.jobs] if param == JOB_AXIS else report.levels(param)
    points = series_points(report, metric, param)
    width = 0.8 / max(len(points), 1)
    many = len(levels) * len(points) > 12  # narrow bars: smaller, upright value labels
    top = 0.0
    for i, (key, by_x) in enumerate(points.items()):
        offset = (i - (len(points) - 1) / 2) * width
        xs, ys, failed = [], [], []
        for j, level in enumerate(levels):
            if level not in by_x:
                continue
            y = _mean(by_x[level])
            (failed if y is None else xs).append(j + offset)
            if y is not None:
                ys.append(y)
        bars = ax.bar(xs, ys, width, label=_series_label(report, param, key) if param != JOB_AXIS else None)
        ax.bar_label(
            bars, fmt="%.3f", fontsize="xx-small" if many else "x-small", padding=2, rotation=90 if many else 0
        )
        for x in failed:
            ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", color="tab:red", fontsize="small")
        top = max([top, *ys])
    crowded = sum(len(str(level)) + 2 for level in levels) > 48  # labels that would run into each other
    ax.set_xticks(range(len(levels)), levels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlim(-0.5, len(levels) - 0.5)  # keep the "failed" marks of empty slots inside the axes
    if param != JOB_AXIS:
        _legend(ax, report, param, len(points))
    return top


HEAT_MAP = "heat map"  # the extra column of a two-override grid


def heat_grid(report: Report, metric: str) -> tuple[list[str], list[str], np.ndarray]:
    """Rows: the first swept override's values, columns: the second's; each cell the mean of its finished jobs
    (seeds and other repeats averaged), NaN where none finished."""
    row_param, col_param = report.factors
    rows, cols = report.levels(row_param), report.levels(col_param)
    cells = series_points(report, metric, col_param)  # {(row value,): {column value: [metric of each job]}}
    grid = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            value = _mean(cells.get((r,), {}).get(c, []))
            if value is not None:
                grid[i, j] = value
    return rows, cols, grid


def plot_heatmap(ax: Axes, report: Report, metric: str) -> None:
    rows, cols, grid = heat_grid(report, metric)
    ax.imshow(grid, cmap="viridis", aspect="auto")
    finite = grid[np.isfinite(grid)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for i in range(len(rows)):
        for j in range(len(cols)):
            value = grid[i, j]
            dark = np.isfinite(value) and (high == low or (value - low) / (high - low) < 0.5)
            text = f"{value:.3f}" if np.isfinite(value) else "–"
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)


def draw(report: Report) -> Figure:
    """One row of panels per metric, one column per swept override (and a heat map where exactly two are swept)."""
    params = report.factors or [JOB_AXIS]
    if len(report.factors) == 2:
        params = [*params, HEAT_MAP]
    dataset = ", ".join(report.datasets) or "unknown dataset"
    fig = Figure(figsize=(6.5 * len(params), 3.8 * len(report.metrics) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(report.metrics), len(params), squeeze=False)
    for row, metric in enumerate(report.metrics):
        for col, param in enumerate(params):
            ax = axes[row][col]
            if param == HEAT_MAP:
                row_param, col_param = report.factors
                plot_heatmap(ax, report, metric)
                ax.set_title(f"{metric} on {dataset} ({report.split}), mean per cell", fontsize="medium")
                ax.set_xlabel(col_param)
                ax.set_ylabel(row_param)
                continue
            if param != JOB_AXIS and report.is_numeric(param):
                plot_lines(ax, report, metric, param)
            else:
                top = plot_bars(ax, report, metric, param)
                ax.set_ylim(0, max(top * 1.15, 1e-3))
            ax.set_title(f"{metric} on {dataset} ({report.split}) by {param}", fontsize="medium")
            ax.set_xlabel(param)
            ax.set_ylabel(f"{report.split} {metric}")
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(_suptitle(report), fontsize="medium")
    return fig


def _suptitle(report: Report) -> str:
    sweep = ", ".join(p.name or str(p) for p in report.sources)
    text = f"Sweep report: {sweep}, {len(report.jobs)} jobs"
    failed = [job.label for job in report.jobs if job.status != "ok"]
    if failed:
        text += f", failed (not plotted): {', '.join(failed)}"
    if report.constant:
        text += "\n" + " ".join(f"{k}={v}" for k, v in report.constant.items())
    return text


def write_figure(report: Report, path: Path, dpi: int = 120) -> Path:
    """Draw and save as PNG: a temporary sibling first, then an atomic rename."""
    with atomic_file(path) as tmp:
        draw(report).savefig(tmp, format="png", dpi=dpi)
    return Path(path)
