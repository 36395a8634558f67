"""``data=ir_datasets``: a small collection served from local files through ir_datasets' own registry (the same
path a downloaded MS MARCO or BEIR id takes after its download), read into the lab and ranked by task=evaluate."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import NamedTuple

import pytest

from retrieval_lab.data.beir import DataFormatError
from retrieval_lab.data.irds import load_ir_datasets
from retrieval_lab.main import train
from tests.conftest import FAST_TRAIN_OVERRIDES, TRAIN_CORPUS, TRAIN_QRELS, TRAIN_QUERIES

_ids = itertools.count()


class TitledDoc(NamedTuple):
    doc_id: str
    title: str
    text: str


def register_local(folder: Path, qrels: dict[str, dict[str, dict[str, int]]] | None = None,
                   corpus: dict | None = None, queries: dict | None = None) -> dict[str, str]:  # fmt: skip
    """Write TSV documents and queries and TREC qrels under ``folder`` and register one ir_datasets id per split
    (a fresh prefix each call); returns {split: id}."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    corpus = TRAIN_CORPUS if corpus is None else corpus
    queries = TRAIN_QUERIES if queries is None else queries
    qrels = {"train": dict(list(TRAIN_QRELS["train"].items())[:18]),
             "test": dict(list(TRAIN_QRELS["train"].items())[18:])} if qrels is None else qrels  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.tsv").write_text("".join(f"{d}\t{t}\t{x}\n" for d, (t, x) in corpus.items()))
    docs = TsvDocs(LocalDownload(folder / "docs.tsv"), doc_cls=TitledDoc)
    prefix = f"lab-test-{next(_ids)}"
    ids = {}
    for split, judged in qrels.items():
        (folder / f"{split}.queries.tsv").write_text("".join(f"{q}\t{queries[q]}\n" for q in judged if q in queries))
        (folder / f"{split}.qrels").write_text("".join(f"{q} 0 {d} {r}\n" for q, ds in judged.items()
                                                       for d, r in ds.items()))  # fmt: skip
        dataset = Dataset(docs, TsvQueries(LocalDownload(folder / f"{split}.queries.tsv")),
                          TrecQrels(LocalDownload(folder / f"{split}.qrels"), {0: "not", 1: "relevant"}))  # fmt: skip
        ids[split] = f"{prefix}/{split}"
        ir_datasets.registry.register(ids[split], dataset)
    return ids


def splits_override(ids: dict[str, str]) -> str:
    return "data.splits={" + ", ".join(f"{s}: '{i}'" for s, i in ids.items()) + "}"


def test_an_ir_datasets_collection_loads_with_titles_and_graded_qrels(tmp_path):
    ids = register_local(tmp_path / "irds")
    dataset = load_ir_datasets(ids)
    assert dataset.corpus.keys() == TRAIN_CORPUS.keys() and dataset.name == f"{ids['train'].split('/')[0]}-train"
    assert dataset.corpus["t0"].title == TRAIN_CORPUS["t0"][0] and dataset.corpus["t0"].text == TRAIN_CORPUS["t0"][1]
    assert set(dataset.qrels) == {"train", "test"} and len(dataset.qrels["train"]) == 18
    assert dataset.qrels["test"] == dict(list(TRAIN_QRELS["train"].items())[18:])
    assert dataset.split_queries("test") == {q: TRAIN_QUERIES[q] for q in dataset.qrels["test"]}


def test_ir_datasets_errors_name_the_id_and_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data.splits.test='no-such/collection' is not an ir_datasets id"):
        load_ir_datasets({"test": "no-such/collection"})
    bad = register_local(tmp_path / "bad", qrels={"test": {"tq0": {"t0": 1, "ghost": 1}}})
    with pytest.raises(DataFormatError, match=r"lab-test-\d+/test .*1 document ids absent.*ghost"):
        load_ir_datasets(bad)
    empty = register_local(tmp_path / "empty", qrels={"test": {"tq0": {"t0": 1}}}, queries={"tq0": " "})
    with pytest.raises(DataFormatError, match="query 'tq0' is empty"):
        load_ir_datasets(empty)
    with pytest.raises(ValueError, match="data.splits must map"):
        load_ir_datasets({})


def test_evaluate_and_train_on_an_ir_datasets_collection(compose_cfg, tmp_path):
    ids = register_local(tmp_path / "irds")
    bm25 = train(compose_cfg(["task=evaluate", "retriever=bm25", "retriever.show_progress=false", "data=ir_datasets",
                              splits_override(ids)]))  # fmt: skip
    assert bm25["test"]["ndcg@10"] > 0.5  # each query names its document's topic twice
    trained = train(compose_cfg([*FAST_TRAIN_OVERRIDES, "data=ir_datasets", splits_override(ids),
                                 f"paths.output_dir={tmp_path / 'train'}"]))  # fmt: skip
    assert trained["train"]["steps"] > 0 and set(trained) >= {"dev", "test"}
