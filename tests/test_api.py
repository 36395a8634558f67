"""The Python API: the README's snippet runs as written; encode() is the lab's encoding path; a list corpus works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from retrieval_lab import api
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.models.biencoder import BiEncoder
from tests.conftest import TINY_BERT

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs_as_written(shared_data, monkeypatch, capsys):
    monkeypatch.setenv("RETRIEVAL_LAB_DATA", str(shared_data))
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str({"ndcg@10": 1.0, "mrr@10": 1.0}) and abs(float(printed[-1]) - 0.679) < 0.0005


def test_encode_is_the_labs_encoding_path_and_lists_are_corpora():
    encoder = BiEncoder(config_overrides=TINY_BERT).eval()
    texts = ["short", "a longer text about aspirin and the heart"]
    assert np.allclose(encoder.encode(texts), encode_texts(encoder, texts, "docs", precision="auto",
                                                           show_progress=False))  # fmt: skip
    bm25 = api.build_retriever(["aspirin and the heart", "vitamin c and colds"])
    assert list(bm25.search({"q": "aspirin heart"}, k=1)["q"]) == ["0"]
