"""The BEIR reader: real layout, CRLF qrels, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
import logging
import urllib.error

import pytest

from retrieval_lab.data import download
from retrieval_lab.data.beir import DataFormatError, load_beir, read_qrels
from retrieval_lab.data.download import DatasetUnavailableError
from tests.conftest import TINY_QRELS, write_beir


def test_loads_layout_and_keeps_graded_relevance(tiny_data):
    ds = load_beir("tiny", tiny_data)
    assert len(ds.corpus) == 6 and len(ds.queries) == 4
    assert ds.qrels == TINY_QRELS
    assert ds.corpus["d1"].full_text() == "Aspirin Aspirin reduces the risk of heart attack in adults."
    assert list(ds.split_queries("test")) == ["q1", "q2", "q3"]


def test_crlf_qrels_read_like_lf(tmp_path):
    crlf = load_beir("tiny", write_beir(tmp_path / "a", crlf=True))
    lf = load_beir("tiny", write_beir(tmp_path / "b"))
    assert crlf.qrels == lf.qrels
    assert all("\r" not in d for docs in crlf.qrels["test"].values() for d in docs)


def _corpus_path(root):
    return root / "beir" / "tiny" / "corpus.jsonl"


def test_malformed_json_line_names_file_and_line(tiny_data):
    path = _corpus_path(tiny_data)
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:3: malformed JSON"):
        load_beir("tiny", tiny_data)


def test_missing_id_names_file_and_line(tiny_data):
    path = tiny_data / "beir" / "tiny" / "queries.jsonl"
    with path.open("a") as out:
        out.write(json.dumps({"text": "no id here"}) + "\n")
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:5: .*no '_id'"):
        load_beir("tiny", tiny_data)


def test_qrels_row_with_wrong_field_count(tiny_data):
    path = tiny_data / "beir" / "tiny" / "qrels" / "test.tsv"
    with path.open("a") as out:
        out.write("q1\td2\n")
    with pytest.raises(DataFormatError, match=r"test\.tsv:5: expected 3 tab-separated fields"):
        read_qrels(path)


def test_qrels_non_numeric_score(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q1\td1\tyes\n")
    with pytest.raises(DataFormatError, match=r"q\.tsv:1: relevance score 'yes'"):
        read_qrels(path)


def test_qrels_ids_missing_from_corpus_and_queries(tmp_path):
    qrels = {"test": {"q1": {"d1": 1, "ghost1": 1, "ghost2": 1}, "nobody": {"d2": 1}}}
    root = write_beir(tmp_path, qrels=qrels)
    with pytest.raises(DataFormatError) as err:
        load_beir("tiny", root)
    message = str(err.value)
    assert "test.tsv" in message
    assert "2 corpus ids absent" in message and "ghost1" in message
    assert "1 query ids absent" in message and "nobody" in message


def test_duplicate_ids_are_refused(tiny_data):
    path = _corpus_path(tiny_data)
    with path.open("a") as out:
        out.write(json.dumps({"_id": "d2", "title": "again", "text": "twice"}) + "\n")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:7: duplicate _id 'd2' \(first seen on line 2\)"):
        load_beir("tiny", tiny_data)


def test_empty_document_is_kept_with_a_warning(tmp_path, caplog):
    corpus = {"d1": ("", ""), "d2": ("Title", "text")}
    root = write_beir(tmp_path, corpus=corpus, queries={"q1": "x"}, qrels={"test": {"q1": {"d1": 1}}})
    with caplog.at_level(logging.WARNING):
        ds = load_beir("tiny", root)
    assert ds.corpus["d1"].full_text() == ""
    assert "1 documents have neither title nor text" in caplog.text


def test_empty_query_is_refused(tmp_path):
    root = write_beir(tmp_path, queries={"q1": "  "}, qrels={"test": {}})
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:1: query 'q1' has empty text"):
        load_beir("tiny", root)


def test_unknown_split_lists_available(tiny_data):
    with pytest.raises(FileNotFoundError, match=r"no qrels for split 'dev'.*\['test', 'train'\]"):
        load_beir("tiny", tiny_data, splits=["dev"])


def test_offline_download_fails_naming_the_variable(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    with pytest.raises(DatasetUnavailableError, match="RETRIEVAL_LAB_DATA"):
        load_beir("nfcorpus", tmp_path)
    left = [p.name for p in (tmp_path / "beir").iterdir()]
    assert left == [".nfcorpus.lock"], "a failed download must leave nothing behind but its (empty) lock file"


@pytest.mark.data
def test_shared_scifact_matches_provenance(shared_data):
    ds = load_beir("scifact", shared_data)
    assert len(ds.corpus) == 5183 and len(ds.queries) == 1109
    assert len(ds.qrels["test"]) == 300 and len(ds.qrels["train"]) == 809
    assert sum(len(d) for d in ds.qrels["test"].values()) == 339


def test_subsample_keeps_judged_documents_and_all_training_queries(tiny_data):
    from retrieval_lab.data.beir import load_beir

    full = load_beir("tiny", tiny_data, download=False)
    small = load_beir("tiny", tiny_data, download=False,
                      subsample={"queries_per_split": 2, "corpus_size": 4, "seed": 0})  # fmt: skip
    assert small.name == "tiny-subsample" and small.qrels["train"] == full.qrels["train"]
    assert len(small.qrels["test"]) == 2 and set(small.qrels["test"]) <= set(full.qrels["test"])
    judged = {d for split in small.qrels.values() for docs in split.values() for d in docs}
    assert judged <= set(small.corpus) and len(small.corpus) == 4
    again = load_beir("tiny", tiny_data, download=False, subsample={"queries_per_split": 2, "corpus_size": 4})
    assert again.qrels == small.qrels and set(again.corpus) == set(small.corpus)  # seeded


@pytest.mark.slow
def test_debug_fast_is_a_trial_run_on_the_real_data(shared_data, monkeypatch):
    from retrieval_lab import api

    monkeypatch.setenv("RETRIEVAL_LAB_DATA", str(shared_data))
    metrics = api.run_experiment(["debug=fast"])
    assert metrics["train"]["steps"] == 10 and 0 < metrics["test"]["ndcg@10"] <= 1
