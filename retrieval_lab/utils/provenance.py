"""What produced a run: the code's git commit (and whether the tree had uncommitted changes), the versions of the
packages that shape the numbers, Python and the machine. Written as ``run_info.json`` in every run folder."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("retrieval_lab", "torch", "transformers", "pytorch-lightning", "hydra-core", "omegaconf", "faiss-cpu",
            "bm25s", "pytrec-eval-terrier", "ranx", "sentence-transformers", "numpy", "scipy")  # fmt: skip


def git_state(folder: Path) -> dict:
    """``{"commit", "dirty"}`` of the git work tree holding ``folder``; ``{}`` outside one (an installed package)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()  # fmt: skip

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def run_info() -> dict:
    return {
        "git": git_state(Path(__file__).resolve().parent),
        "packages": versions(),
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },  # fmt: skip
    }
