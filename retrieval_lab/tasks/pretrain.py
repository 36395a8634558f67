"""``task=pretrain``: run only the pre-training stage of ``pretrain_task`` and keep its weights in the run folder.

Fine-tune from them later with ``init_from=<run folder>``; ``task=train pretrain_task=<task>`` does both in one
run instead (with the stage cached, see ``pretrain/stage.py``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from retrieval_lab.pretrain.stage import run_pretraining
from retrieval_lab.utils.io import write_json


def run(cfg: DictConfig) -> dict:
    """Entry for ``task=pretrain``; writes ``pretrain/encoder.pt`` and ``metrics.json`` into ``paths.output_dir``."""
    if cfg.get("pretrain_task") is None:
        raise ValueError("task=pretrain needs a pretrain_task (ict, bfs, wlp, mlm or mix)")
    output_dir = Path(cfg.paths.output_dir)
    results = {"pretrain": run_pretraining(cfg, output_dir / "pretrain")}
    write_json(output_dir / "metrics.json", results)
    return results
