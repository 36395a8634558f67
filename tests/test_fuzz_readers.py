"""Property-based fuzzing of every reader: any bytes either load or fail with one ``DataFormatError`` that names
the file (and the line, for line formats); never a library's raw exception. Inputs are valid lines, valid lines
with random byte edits, random bytes and random text, in random order. Bounded and derandomized in the default
suite; ``FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_readers.py`` runs a longer search by hand."""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval_lab.data.beir import DataFormatError, read_corpus, read_qrels, read_queries
from retrieval_lab.data.jsonl import load_jsonl
from retrieval_lab.data.squad import read_squad
from retrieval_lab.data.sts import read_sick, read_stsb_split
from retrieval_lab.data.wiki import load_wikispeedia
from retrieval_lab.eval.trec import read_trec_run

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=EXAMPLES <= 200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
EDIT_BYTES = b'{}[]":,\t\n\r\\ 0-9.e\x00\xff\xc3\xa9_#'


@st.composite
def corrupted(draw, valid: list[bytes], header: bytes | None = None) -> bytes:
    """A file of up to 8 lines: valid ones, edited ones (1-3 byte deletions, substitutions, insertions), random
    bytes and random text; ``header`` first when given (so the lines after it are reached)."""
    lines = [header] if header is not None and draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            lines.append(draw(st.sampled_from(valid)))
        elif kind == 1:
            line = bytearray(draw(st.sampled_from(valid)))
            for _ in range(draw(st.integers(1, 3))):
                i = draw(st.integers(0, len(line)))
                op = draw(st.integers(0, 2))
                if op == 0 and i < len(line):
                    del line[i]
                elif op == 1 and i < len(line):
                    line[i] = draw(st.integers(0, 255))
                else:
                    line[i:i] = bytes([draw(st.sampled_from(EDIT_BYTES))])
            lines.append(bytes(line))
        elif kind == 2:
            lines.append(draw(st.binary(max_size=40)))
        else:
            lines.append(draw(st.text(max_size=40)).encode("utf-8", "surrogatepass"))
    return draw(st.sampled_from([b"\n", b"\r\n"])).join(lines) + draw(st.sampled_from([b"", b"\n"]))


def loads_or_names_the_file(read, path: Path, data: bytes, line_format: bool = True):
    path.write_bytes(data)
    try:
        return read(path)
    except DataFormatError as err:
        message = str(err)
        assert str(path) in message, message
        if line_format and "not UTF-8" in message:  # a decoding error names its line too
            assert re.search(re.escape(str(path)) + r":\d+: ", message), message
        return None


def _dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-"))


CORPUS_LINES = [json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}).encode() for i in range(3)]
QUERY_LINES = [json.dumps({"_id": f"q{i}", "text": f"query {i}"}).encode() for i in range(3)]
QRELS_LINES = [b"q0\td0\t1", b"q1\td1\t2", b"q2\td2\t0"]


@FUZZ
@given(corrupted(CORPUS_LINES))
def test_fuzz_beir_corpus(data):
    loads_or_names_the_file(read_corpus, _dir() / "corpus.jsonl", data)


@FUZZ
@given(corrupted(QUERY_LINES))
def test_fuzz_beir_queries(data):
    loads_or_names_the_file(read_queries, _dir() / "queries.jsonl", data)


@FUZZ
@given(corrupted(QRELS_LINES, header=b"query-id\tcorpus-id\tscore"))
def test_fuzz_beir_qrels(data):
    loads_or_names_the_file(read_qrels, _dir() / "test.tsv", data)


SQUAD = {"data": [{"title": "A", "paragraphs": [{"context": "Paris is in France.", "qas": [
    {"id": "x1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["data", "title", "paragraphs", "context", "qas", "id", "question", "answers", "text", "answer_start"]
            ),
            children,
            max_size=4,
        )
    ),  # fmt: skip
    max_leaves=12,
)


@st.composite
def squad_files(draw) -> bytes:
    """A SQuAD-shaped document with one part replaced by a random JSON value, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    doc = json.loads(json.dumps(SQUAD))
    path = draw(st.sampled_from([("data",), ("data", 0), ("data", 0, "title"), ("data", 0, "paragraphs"),
                                 ("data", 0, "paragraphs", 0), ("data", 0, "paragraphs", 0, "context"),
                                 ("data", 0, "paragraphs", 0, "qas"), ("data", 0, "paragraphs", 0, "qas", 0),
                                 ("data", 0, "paragraphs", 0, "qas", 0, "answers"),
                                 ("data", 0, "paragraphs", 0, "qas", 0, "answers", 0),
                                 ("data", 0, "paragraphs", 0, "qas", 0, "answers", 0, "answer_start")]))  # fmt: skip
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = draw(json_values)
    text = json.dumps(doc).encode()
    return text if draw(st.booleans()) else text[: draw(st.integers(0, len(text)))]


@FUZZ
@given(squad_files())
def test_fuzz_squad(data):
    loads_or_names_the_file(read_squad, _dir() / "dev-v1.1.json", data, line_format=False)


STSB_LINES = [b"main-captions\tMSRvid\t2012test\t0001\t5.000\tA man plays.\tA man is playing.",
              b"main-news\theadlines\t2013\t0002\t1.5\tStocks fell.\tRain came.\textra\tfields"]  # fmt: skip
SICK_HEADER = b"pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set"
SICK_LINES = [b"1\tA dog runs.\tA dog is running.\tENTAILMENT\t4.5\tTRAIN", b"2\tA b.\tC d.\tNEUTRAL\t1.0\tTEST"]


@FUZZ
@given(corrupted(STSB_LINES))
def test_fuzz_stsb(data):
    loads_or_names_the_file(read_stsb_split, _dir() / "sts-train.csv", data)


@FUZZ
@given(corrupted(SICK_LINES, header=SICK_HEADER))
def test_fuzz_sick(data):
    loads_or_names_the_file(read_sick, _dir() / "SICK.txt", data)


TREC_LINES = [b"q1 Q0 d1 1 2.5 lab", b"q1 Q0 d2 2 1.25 lab", b"q2 Q0 d1 1 -0.5 lab"]


@FUZZ
@given(corrupted(TREC_LINES))
def test_fuzz_trec_run(data):
    loads_or_names_the_file(read_trec_run, _dir() / "run.test.trec", data)


ARTICLE_LINES = [json.dumps({"article": n, "text": f"{n}\n\n{n} is a long enough sentence about {n} here ok."}
                            ).encode() for n in ("Paris", "France", "Kenya")]  # fmt: skip
LINK_LINES = [b"Paris\tFrance", b"France\tKenya", b"# comment", b"Kenya\tParis"]


@FUZZ
@given(corrupted(ARTICLE_LINES), corrupted(LINK_LINES), st.booleans())
def test_fuzz_wikispeedia(articles, links, gzipped):
    root = _dir()
    folder = root / "wiki"
    folder.mkdir()
    name = "articles.jsonl.gz" if gzipped else "articles.jsonl"
    (folder / name).write_bytes(gzip.compress(articles) if gzipped else articles)
    (folder / "links.tsv").write_bytes(links)
    try:
        load_wikispeedia(root, folder="wiki", articles_file=name, links_file="links.tsv", drop=())
    except DataFormatError as err:
        assert str(folder / name) in str(err) or str(folder / "links.tsv") in str(err), str(err)


def test_fuzzing_reaches_both_outcomes():
    """The generators are not trivial: among the corpus inputs some load and some are refused."""
    outcomes = set()

    @settings(max_examples=80, derandomize=True, deadline=None, database=None)
    @given(corrupted(CORPUS_LINES))
    def probe(data):
        outcomes.add(loads_or_names_the_file(read_corpus, _dir() / "corpus.jsonl", data) is None)

    probe()
    assert outcomes == {True, False}


@pytest.fixture(autouse=True)
def _clean_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # every example's folder under pytest's tmp_path


JSONL_TRAIN_LINES = [
    json.dumps({"query": "what lowers risk", "positives": ["Aspirin lowers risk."], "negatives": ["Rain."]}).encode(),
    json.dumps({"id": "q7", "query": "vitamin c", "positives": [{"title": "C", "text": "Vitamin C."}]}).encode(),
    json.dumps({"query": "aspirin", "positives": ["Aspirin lowers risk."], "negatives": [{"text": "Snow."}]}).encode(),
]


@FUZZ
@given(corrupted(JSONL_TRAIN_LINES))
def test_fuzz_jsonl_training_data(data):
    loads_or_names_the_file(lambda path: load_jsonl(train_file=str(path)), _dir() / "train.jsonl", data)
