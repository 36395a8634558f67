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
    """``{qid: {doc_id: score}}`` from a TREC run file; a malformed line is a ``DataFormatError`` naming it."""
    from retrieval_lab.data.beir import DataFormatError, utf8_lines

    run: Run = {}
    for lineno, line in utf8_lines(Path(path)):
        fields = line.split()
        if len(fields) != 6:
            raise DataFormatError(f"{path}:{lineno}: expected 6 fields in a TREC run line, got {len(fields)}")
        try:
            score = float(fields[4])
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: score {fields[4]!r} is not a number") from None
        if score != score:  # NaN ranks nowhere
            raise DataFormatError(f"{path}:{lineno}: score is NaN")
        run.setdefault(fields[0], {})[fields[2]] = score
    return run
