"""Read Hydra output folders into jobs: each job's overrides, its metrics (or why it has none), its dataset.

A multirun folder holds ``multirun.yaml`` and one ``<N>/`` per job; each job has ``.hydra/overrides.yaml``
and, once it succeeded, ``metrics.json``. A single run folder (``.hydra/`` directly inside) counts as one job,
so a sweep can be reported next to a baseline run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ERROR_LINE = re.compile(r"\]\[(ERROR|CRITICAL)\] - (.*)")


class ReportError(ValueError):
    """A folder or option the report cannot use; the message says which and why."""


@dataclass
class Job:
    label: str
    path: Path
    overrides: dict[str, str]  # key -> value exactly as written on the command line or in the sweep
    choices: dict[str, str]  # hydra.runtime.choices: the option picked in every config group
    config: DictConfig | None  # the job's unresolved .hydra/config.yaml
    metrics: dict | None  # metrics.json, None when the job did not write one
    note: str = ""

    @property
    def status(self) -> str:
        return "ok" if self.metrics is not None else "failed"

    @property
    def dataset(self) -> str | None:
        if self.config is None:
            return None
        name = OmegaConf.select(self.config, "data.name", default=None, throw_on_resolution_failure=False)
        return None if name is None else str(name)

    def value(self, key: str) -> str:
        """The job's value for an override key: as overridden, else the group choice or config value in effect."""
        if key in self.overrides:
            value = self.overrides[key]
            return value.lower() if value.lower() in ("true", "false") else value  # Hydra's sweeps write False
        if key in self.choices:
            return self.choices[key]
        if self.config is not None:
            value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
            if isinstance(value, bool):  # as an override writes it: true, false
                return str(value).lower()
            if value is not None and not isinstance(value, DictConfig):
                return str(value)
        return ""

    def metric(self, split: str, name: str) -> float | None:
        value = (self.metrics or {}).get(split, {}).get(name)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Report:
    """The jobs of one or more sweeps, which overrides they vary, and the metrics to show."""

    jobs: list[Job]
    swept: list[str]  # override keys whose value differs between jobs, in the order they first appear
    constant: dict[str, str]  # override keys every job shares
    metrics: list[str]
    split: str
    sources: list[Path] = field(default_factory=list)
    mean_over: str | None = None  # a swept key (e.g. seed) whose jobs are also summarised as mean and std
    baseline: str | None = None  # KEY=VALUE: the arm every other arm is tested against, per query
    ignore: list[str] = field(default_factory=list)  # swept keys that do not make an arm (shown per job only)

    @property
    def factors(self) -> list[str]:
        """The swept overrides other than ``mean_over`` and ``ignore``: the mean table's groups, the figure's axes
        and series."""
        return [key for key in self.swept if key != self.mean_over and key not in self.ignore]

    def arms(self) -> dict[tuple[str, ...], list[Job]]:
        """The jobs grouped by their ``factors`` values (an arm and its seeds), in the order they first appear."""
        groups: dict[tuple[str, ...], list[Job]] = {}
        for job in self.jobs:
            groups.setdefault(tuple(job.value(k) for k in self.factors), []).append(job)
        return groups

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(job.dataset for job in self.jobs if job.dataset))

    def is_numeric(self, key: str) -> bool:
        """True when every job's value of ``key`` parses as a number (plotted as a line, sorted by value)."""
        values = [job.value(key) for job in self.jobs]
        return all(_as_float(v) is not None for v in values)

    def levels(self, key: str) -> list[str]:
        """The distinct values of ``key``: numeric ones sorted, others in sweep order."""
        values = list(dict.fromkeys(job.value(key) for job in self.jobs))
        return sorted(values, key=_as_float) if self.is_numeric(key) else values


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_override(text: str) -> tuple[str, str]:
    """``"+model.pooling=cls"`` -> ``("model.pooling", "cls")``; a deletion ``~key`` gets the value ``"~"``."""
    if text.startswith("~"):
        return text[1:].partition("=")[0], "~"
    key, _, value = text.lstrip("+").partition("=")
    return key, value


def job_dirs(root: Path) -> list[Path]:
    """The job folders of a multirun folder (sorted by job number), or the folder itself for a single run."""
    if not root.is_dir():
        raise ReportError(f"{root}: not a folder")
    if (root / ".hydra").is_dir():
        return [root]
    jobs = [p for p in root.iterdir() if (p / ".hydra").is_dir()]
    if not jobs:
        raise ReportError(f"{root}: no Hydra job folders (expected <dir>/<N>/.hydra/ or <dir>/.hydra/)")
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _load_yaml(path: Path):
    return OmegaConf.load(path) if path.is_file() else None


def last_error(log: Path) -> str:
    """The last ERROR line a job logged, if any (Hydra's ``[time][module][LEVEL] - message`` format)."""
    if not log.is_file():
        return ""
    errors = [m.group(2) for line in log.read_text(errors="replace").splitlines() if (m := ERROR_LINE.search(line))]
    return errors[-1] if errors else ""


def read_job(path: Path, label: str) -> Job:
    overrides_list = _load_yaml(path / ".hydra" / "overrides.yaml") or []
    overrides = dict(parse_override(str(o)) for o in overrides_list)
    hydra_cfg = _load_yaml(path / ".hydra" / "hydra.yaml")
    choices = OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default=None) if hydra_cfg else None
    choices = {str(k): str(v) for k, v in (choices or {}).items()}
    metrics, note = None, ""
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as err:
            note = f"metrics.json unreadable: {err}"
    else:
        note = _any_log_error(path) or "no metrics.json, no ERROR line in its log (still running?)"
    return Job(label, path, overrides, choices, _load_yaml(path / ".hydra" / "config.yaml"), metrics, note)


def _any_log_error(path: Path) -> str:
    for log in sorted(path.glob("*.log")):
        if error := last_error(log):
            return error
    return ""


def collect_jobs(dirs: Sequence[str | Path]) -> list[Job]:
    """Every job under ``dirs``; labels are the job numbers, prefixed by the folder name when there are several."""
    roots = [Path(d) for d in dirs]
    if not roots:
        raise ReportError("no folder given")
    names = [r.resolve().name for r in roots]
    prefixes = names if len(set(names)) == len(names) else [str(r) for r in roots]
    jobs = []
    for root, prefix in zip(roots, prefixes, strict=True):
        for path in job_dirs(root):
            if path == root:  # a single run
                label = prefix
            else:
                label = f"{prefix}/{path.name}" if len(roots) > 1 else path.name
            jobs.append(read_job(path, label))
    return jobs


def split_overrides(jobs: Sequence[Job]) -> tuple[list[str], dict[str, str]]:
    """Override keys that differ between jobs (swept) and those all jobs share (constant)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    swept, constant = [], {}
    for key in keys:
        values = {job.value(key) for job in jobs}
        if len(values) > 1:
            swept.append(key)
        else:
            constant[key] = values.pop()
    return swept, constant


def build_report(
    dirs: Sequence[str | Path],
    metrics: Sequence[str],
    split: str = "test",
    mean_over: str | None = None,
    baseline: str | None = None,
    ignore: Sequence[str] = (),
) -> Report:
    """Collect the jobs and check that the metrics exist in the finished ones (naming those that do), and that
    ``mean_over`` and each ``ignore`` key are swept overrides."""
    jobs = collect_jobs(dirs)
    finished = [job for job in jobs if job.metrics is not None]
    if finished:
        available = list(dict.fromkeys(k for job in finished for k in (job.metrics or {}).get(split, {})))
        if not available:
            splits = sorted({s for job in finished for s in job.metrics or {}})
            raise ReportError(f"no finished job has a {split!r} split in metrics.json (splits: {splits})")
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ReportError(f"metrics {unknown} not in the {split!r} results (available: {available})")
    swept, constant = split_overrides(jobs)
    if mean_over is not None and mean_over not in swept:
        raise ReportError(f"--mean-over {mean_over}: not an override that differs between jobs (those: {swept})")
    if unknown := [key for key in ignore if key not in swept]:
        raise ReportError(f"--ignore {','.join(unknown)}: not overrides that differ between jobs (those: {swept})")
    return Report(jobs, swept, constant, list(metrics), split, [Path(d) for d in dirs], mean_over, baseline,
                  list(ignore))  # fmt: skip
