"""STS evaluation: the STS-B and SICK readers (their pitfalls and malformed lines), the correlations against an
independent computation, task=evaluate_sts end to end on tiny files and a tiny model, and the real files' counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval_lab.data.beir import DataFormatError
from retrieval_lab.data.sts import load_sickr, load_stsb, read_sick, read_stsb_split
from retrieval_lab.eval.sts import correlations
from retrieval_lab.main import train
from tests.conftest import TINY_MODEL_OVERRIDES

SENTENCES = ["A man is playing a guitar.", "A man plays the guitar.", "A woman is slicing an onion.",
             'He said "no to the plan.', "A dog runs in the park.", "Two dogs play in the grass.",
             "The stock market fell sharply.", "Shares dropped on Monday."]  # fmt: skip
SICK_COLUMNS = ["pair_ID", "sentence_A", "sentence_B", "entailment_label", "relatedness_score", "entailment_AB",
                "entailment_BA", "sentence_A_original", "sentence_B_original", "sentence_A_dataset",
                "sentence_B_dataset", "SemEval_set"]  # fmt: skip


def stsb_line(i: int, score: float, first: str, second: str, extra: bool = False) -> str:
    fields = ["main-captions", "MSRvid", "2012test", f"{i:04d}", str(score), first, second]
    return "\t".join(fields + (["source-a", "source-b"] if extra else []))


def write_sts(root: Path) -> Path:
    folder = root / "sts" / "stsbenchmark"
    folder.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [stsb_line(i, (i * 1.7) % 5, SENTENCES[i % 8], SENTENCES[(i + 1) % 8], extra=i % 3 == 0)
                 for i in range(12)]  # fmt: skip
        (folder / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
    sick = root / "sts" / "sick"
    sick.mkdir(parents=True)
    rows = ["\t".join(SICK_COLUMNS)]
    for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:] + SENTENCES[:1], strict=True)):
        for set_name in ("TRAIN", "TRIAL", "TEST"):
            rows.append("\t".join([str(i), a, b, "NEUTRAL", str(1 + i % 5), "A_neutral_B", "B_neutral_A", a, b,
                                   "FLICKR", "FLICKR", set_name]))  # fmt: skip
    (sick / "SICK.txt").write_bytes("\r\n".join(rows).encode())  # CRLF, no newline at the end: as released
    return root


def test_stsb_reader_splits_on_tabs_and_keeps_unbalanced_quotes(tmp_path):
    root = write_sts(tmp_path)
    pairs = read_stsb_split(root / "sts" / "stsbenchmark" / "sts-test.csv")
    assert len(pairs) == 12  # CSV quoting would merge the lines after the unbalanced quote
    assert pairs[3].sentence1 == 'He said "no to the plan.' and pairs[3].score == pytest.approx(5.1 % 5)


def test_sick_reader_maps_semeval_sets_and_handles_crlf(tmp_path):
    splits = read_sick(write_sts(tmp_path) / "sts" / "sick" / "SICK.txt")
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "dev": 8, "test": 8}
    assert splits["test"][-1].sentence2 == SENTENCES[0] and not splits["test"][-1].sentence2.endswith("\r")


@pytest.mark.parametrize(
    ("which", "line", "message"),
    [
        ("stsb", "a\tb\tc\td\t4.0\tonly one sentence", r"sts-dev.csv:13: 6 tab-separated fields"),
        ("stsb", stsb_line(1, 0.0, "x", "y").replace("\t0.0\t", "\tfive\t"), r"sts-dev.csv:13: score 'five'"),
        ("stsb", stsb_line(1, 5.5, "x", "y"), r"sts-dev.csv:13: score 5.5 outside \[0, 5\]"),
        ("stsb", stsb_line(1, 1.0, "x", "  "), r"sts-dev.csv:13: empty sentence"),
        ("sick", "\t".join(["99", "a", "b", "NEUTRAL", "3", *["x"] * 6, "VALID"]), r"SICK.txt:26: SemEval_set 'VALID'"),
        ("sick", "99\ta\tb", r"SICK.txt:26: 3 tab-separated fields, expected 12"),
        ("sick", "\t".join(["99", "a", "b", "NEUTRAL", "0.5", *["x"] * 6, "TEST"]), r"SICK.txt:26: score 0.5"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, which, line, message):
    root = write_sts(tmp_path)
    if which == "stsb":
        path = root / "sts" / "stsbenchmark" / "sts-dev.csv"
        path.write_text(path.read_text() + line + "\n")
        with pytest.raises(DataFormatError, match=message):
            load_stsb(root)
    else:
        path = root / "sts" / "sick" / "SICK.txt"
        path.write_bytes(path.read_bytes() + b"\r\n" + line.encode())
        with pytest.raises(DataFormatError, match=message):
            load_sickr(root)


def test_sick_without_its_header_is_refused(tmp_path):
    path = write_sts(tmp_path) / "sts" / "sick" / "SICK.txt"
    path.write_bytes(path.read_bytes().split(b"\r\n", 1)[1])
    with pytest.raises(DataFormatError, match=r"SICK.txt:1: not a SICK header"):
        read_sick(path)


def test_correlations_match_an_independent_computation():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 200)
    predicted = gold + rng.normal(0, 2, 200)
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (no ties in continuous draws)
    got = correlations(predicted, gold)
    assert got["pearson"] == pytest.approx(np.corrcoef(predicted, gold)[0, 1], abs=1e-12)
    assert got["spearman"] == pytest.approx(np.corrcoef(ranks(predicted), ranks(gold))[0, 1], abs=1e-12)
    assert 0.3 < got["spearman"] < 0.8  # a noisy but real relation
    with pytest.raises(ValueError, match="equal-length"):
        correlations(predicted[:5], gold)


@pytest.mark.parametrize(("data", "pooling"), [("stsb", "mean"), ("sickr", "cls")])
def test_evaluate_sts_end_to_end_on_tiny_files(compose_cfg, tmp_path, data, pooling):
    root = write_sts(tmp_path / "data")
    cfg = compose_cfg(["task=evaluate_sts", f"data={data}", f"model.pooling={pooling}", "task.splits=[dev,test]",
                       *TINY_MODEL_OVERRIDES], data_root=root)  # fmt: skip
    metrics = train(cfg)
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for split in ("dev", "test"):
        assert -1.0 <= metrics[split]["spearman"] <= 1.0 and -1.0 <= metrics[split]["pearson"] <= 1.0
        rows = [line.split("\t") for line in (out / f"sts.{split}.tsv").read_text().splitlines()]
        assert len(rows) == metrics[split]["pairs"] and all(-1.0 <= float(r[1]) <= 1.0 + 1e-6 for r in rows)
        gold = np.array([float(r[0]) for r in rows])
        assert correlations(np.array([float(r[1]) for r in rows]), gold)["spearman"] == pytest.approx(
            metrics[split]["spearman"], abs=1e-5
        )  # the file re-scores to the reported figure


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.side=both"], "task.side must be one of"),
        (["task.splits=[]"], "task.splits is empty"),
        (["task.splits=[validation]"], r"task.splits \['validation'\] not in dataset 'stsb'"),
        (["data=beir", "data.name=tiny"], "needs a sentence-similarity dataset"),
    ],
)
def test_bad_sts_settings_are_refused(compose_cfg, tmp_path, tiny_data, overrides, message):
    root = write_sts(tiny_data)  # beside the tiny BEIR set
    cfg = compose_cfg(["task=evaluate_sts", "data=stsb", *TINY_MODEL_OVERRIDES, *overrides], data_root=root)
    with pytest.raises(ValueError, match=message):
        train(cfg)


def test_ranking_task_refuses_an_sts_dataset(compose_cfg, tmp_path):
    root = write_sts(tmp_path / "data")
    with pytest.raises(ValueError, match="use task=evaluate_sts"):
        train(compose_cfg(["task=evaluate", "data=stsb", *TINY_MODEL_OVERRIDES], data_root=root))


def test_real_sts_files_have_the_documented_counts(shared_data):
    stsb, sick = load_stsb(shared_data), load_sickr(shared_data)
    assert {k: len(v) for k, v in stsb.splits.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    assert {k: len(v) for k, v in sick.splits.items()} == {"train": 4439, "dev": 495, "test": 4906}
    assert all(0 <= p.score <= 5 for pairs in stsb.splits.values() for p in pairs)
