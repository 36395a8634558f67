"""``data=jsonl`` (a researcher's own training data as JSON lines) and ``negatives=given`` (its hard negatives)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval_lab.data.beir import DataFormatError, Document
from retrieval_lab.data.jsonl import content_id, load_jsonl
from retrieval_lab.main import train
from retrieval_lab.negatives.given import GivenNegatives
from tests.conftest import FAST_TRAIN_OVERRIDES, TRAIN_CORPUS, TRAIN_QRELS, TRAIN_QUERIES


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_documents_by_text_object_or_corpus_id_and_repeated_texts_are_one_document(tmp_path):
    corpus = _write(tmp_path / "corpus.jsonl", [{"_id": "c1", "title": "Kept", "text": "A corpus document."}])
    train_file = _write(tmp_path / "train.jsonl", [
        {"query": "aspirin", "positives": ["Aspirin lowers risk."], "negatives": ["Rain falls.", {"id": "c1"}]},
        "",  # blank lines are skipped
        {"id": "q9", "query": "vitamin", "positives": [{"title": "C", "text": "Vitamin C."}, "Aspirin lowers risk."],
         "negatives": ["Aspirin lowers risk.", "Rain falls."]},
    ])  # fmt: skip
    test_file = _write(tmp_path / "test.jsonl", [{"query": "rain", "positives": ["Rain falls."], "negatives": ["x"]}])
    ds = load_jsonl(str(train_file), test_file=str(test_file), corpus_file=str(corpus))
    aspirin, rain = content_id(Document("", "Aspirin lowers risk.")), content_id(Document("", "Rain falls."))
    vitamin = content_id(Document("C", "Vitamin C."))
    assert set(ds.corpus) == {"c1", aspirin, rain, vitamin, content_id(Document("", "x"))}
    assert ds.queries == {"train-1": "aspirin", "q9": "vitamin", "test-1": "rain"}
    assert ds.qrels == {
        "train": {"train-1": {aspirin: 1}, "q9": {vitamin: 1, aspirin: 1}},
        "test": {"test-1": {rain: 1}},
    }
    # given negatives: train only, never the query's own positive, each once
    assert ds.hard_negatives == {"train-1": [rain, "c1"], "q9": [rain]}
    assert ds.corpus["c1"] == Document("Kept", "A corpus document.")


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"positives": ["a"]}, "'query' must be a non-empty string"),
    ({"query": "  ", "positives": ["a"]}, "'query' must be a non-empty string"),
    ({"query": "q"}, "'positives' must be a non-empty list"),
    ({"query": "q", "positives": []}, "'positives' must be a non-empty list"),
    ({"query": "q", "positives": ["a"], "negatives": "b"}, "'negatives' must be a list"),
    ({"query": "q", "positives": [3]}, "positives: a document is a string or an object"),
    ({"query": "q", "positives": [""]}, "positives: empty document"),
    ({"query": "q", "positives": [{"id": "nowhere"}]}, "'nowhere' is not in it"),
    ({"query": "q", "positives": [{"text": 5}]}, "'title' and 'text' must be strings"),
    ({"query": "q", "positives": [{"id": "c1", "text": "other"}]}, "'c1' already has another text"),
])  # fmt: skip
def test_malformed_lines_name_the_file_and_line(tmp_path, line, message):
    corpus = _write(tmp_path / "corpus.jsonl", [{"_id": "c1", "text": "A corpus document."}])
    path = _write(tmp_path / "train.jsonl", [{"query": "fine", "positives": ["ok"]}, line])
    with pytest.raises(DataFormatError, match=rf"{path}:2: .*" if "JSON" in message else rf"{path}:2: "):
        load_jsonl(str(path), corpus_file=str(corpus))
    with pytest.raises(DataFormatError, match=message):
        load_jsonl(str(path), corpus_file=str(corpus))


def test_file_level_errors(tmp_path):
    dup = _write(tmp_path / "dup.jsonl", [{"id": "a", "query": "q", "positives": ["x"]},
                                          {"id": "a", "query": "r", "positives": ["y"]}])  # fmt: skip
    with pytest.raises(DataFormatError, match=r"dup.jsonl:2: query id 'a' is used twice"):
        load_jsonl(str(dup))
    with pytest.raises(DataFormatError, match="no query lines"):
        load_jsonl(str(_write(tmp_path / "empty.jsonl", [""])))
    with pytest.raises(FileNotFoundError, match="data.test_file="):
        load_jsonl(str(dup), test_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="needs data.train_file"):
        load_jsonl(None)


def write_tiny_jsonl(folder: Path) -> dict[str, Path]:
    """The tiny training set (tests/conftest.py) as JSON lines: each query's relevant documents as objects, the
    next topic's document as its given negative; the last 6 queries as the test file."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(TRAIN_CORPUS)
    rows = []
    for qid, judged in TRAIN_QRELS["train"].items():
        docs = [{"id": d, "title": TRAIN_CORPUS[d][0], "text": TRAIN_CORPUS[d][1]} for d in judged]
        after = ids[(ids.index(next(iter(judged))) + 1) % len(ids)]
        rows.append(
            {
                "id": qid,
                "query": TRAIN_QUERIES[qid],
                "positives": docs,
                "negatives": [{"id": after, "title": TRAIN_CORPUS[after][0], "text": TRAIN_CORPUS[after][1]}],
            }
        )
    return {"train": _write(folder / "train.jsonl", rows[:-6]), "test": _write(folder / "test.jsonl", rows[-6:])}


def test_training_on_jsonl_draws_the_given_negatives(compose_cfg, tmp_path, monkeypatch):
    files = write_tiny_jsonl(tmp_path / "mine")
    drawn = []
    real = GivenNegatives.sample
    monkeypatch.setattr(GivenNegatives, "sample", lambda self, *a: drawn.append(real(self, *a)) or drawn[-1])
    overrides = [o for o in FAST_TRAIN_OVERRIDES if not o.startswith("negatives=")]
    cfg = compose_cfg([*overrides, "data=jsonl", f"data.train_file={files['train']}",
                       f"data.test_file={files['test']}", "negatives=given", "datamodule.dev_size=4"])  # fmt: skip
    metrics = train(cfg)
    assert metrics["train"]["steps"] > 0 and set(metrics) >= {"dev", "test"}
    given = {json.loads(line)["negatives"][0]["id"] for line in files["train"].read_text().splitlines()}
    assert drawn and all(len(ids) == 1 and ids[0] in given for ids in drawn)


def test_given_negatives_need_a_dataset_that_has_them(compose_cfg, train_data):
    cfg = compose_cfg([o for o in FAST_TRAIN_OVERRIDES if not o.startswith("negatives=")] + ["negatives=given"],
                      data_root=train_data)  # fmt: skip
    with pytest.raises(ValueError, match="negatives=given draws the negatives a dataset comes with"):
        train(cfg)
