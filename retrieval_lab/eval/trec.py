"""Runs in TREC format (``qid Q0 docid rank score tag``), written atomically, so any tool can re-score them."""

from __future__ import annotations

from pathlib import Path

from retrieval_lab.utils.io import atomic_write_text

Run = dict[str, dict[str, float]]


def write_trec_run(run: Run, path: str | Path, tag: str = "retrieval_lab") -> Path:
    lines = []
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n" for rank, (did, score) in enumerate(ranked, 1)]
    return atomic_write_text(path, "".join(lines))


def read_trec_run(path: str | Path) -> Run:
    run: Run = {}
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) != 6:
                raise ValueError(f"{path}:{lineno}: expected 6 fields in a TREC run line, got {len(fields)}")
            run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
    return run
