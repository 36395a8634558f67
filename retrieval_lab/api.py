"""The lab from Python (a notebook, a script): load an encoder and encode texts, build a retriever over a corpus
and search it, score a run, and run any experiment from a list of overrides.

    from retrieval_lab import api
    encoder = api.load_encoder("all-MiniLM-L6-v2")          # or an export folder (<run>/export/hf)
    vectors = encoder.encode(["a sentence", "another"])       # numpy (2, 384), normalised
    retriever = api.build_retriever({"d1": "Aspirin lowers heart attack risk.", "d2": "Vitamin C and colds."},
                                    encoder=encoder)          # encoder=None: BM25
    run = retriever.search({"q1": "does aspirin prevent heart attacks"}, k=2)
    api.evaluate(run, {"q1": {"d1": 1}}, ["ndcg@10", "mrr@10"])
    metrics = api.run_experiment(["task=evaluate", "retriever=bm25", "data=scifact"])

Each function is a thin layer over what the Hydra tasks use, so the numbers are the same as the command line's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.metrics import checked_per_query_metrics, mean_metrics
from retrieval_lab.eval.trec import Run
from retrieval_lab.models.base import Encoder
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.retrievers.base import Retriever
from retrieval_lab.retrievers.bm25 import BM25Retriever
from retrieval_lab.retrievers.dense import DenseRetriever


def load_encoder(name_or_folder: str = "all-MiniLM-L6-v2", **settings) -> BiEncoder:
    """A bi-encoder from a Hugging Face name or folder (``settings``: pooling, normalize, max lengths, prefixes,
    as ``model=biencoder``'s keys); ``encoder.encode(texts)`` gives numpy vectors."""
    return BiEncoder(name_or_folder, **settings).eval()


def _documents(corpus: Mapping[str, str | Document] | Sequence[str]) -> dict[str, Document]:
    items = corpus.items() if isinstance(corpus, Mapping) else ((str(i), t) for i, t in enumerate(corpus))
    return {str(k): v if isinstance(v, Document) else Document("", str(v)) for k, v in items}


def build_retriever(corpus: Mapping[str, str | Document] | Sequence[str], encoder: Encoder | None = None,
                    **settings) -> Retriever:  # fmt: skip
    """An indexed retriever over ``corpus`` (ids to texts or Documents, or a list: ids are positions): dense over
    ``encoder`` (``settings``: index_factory, precision, batch_size, ...), or BM25 where ``encoder`` is None
    (``settings``: k1, b, method, ...). ``search(queries, k)`` takes ``{qid: text}`` and returns a run."""
    if encoder is None:
        retriever = BM25Retriever(**{"show_progress": False, **settings})
    else:
        retriever = DenseRetriever(encoder, **{"show_progress": False, **settings})
    retriever.index(_documents(corpus))
    return retriever


def evaluate(run: Run, qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str] = ("ndcg@10",)) -> dict:
    """The mean of each metric over the judged queries (the lab's pytrec_eval path; unretrieved queries score 0)."""
    qrels = {q: dict(d) for q, d in qrels.items()}
    return mean_metrics(checked_per_query_metrics(qrels, {q: run.get(q, {}) for q in qrels}, metrics))


def run_experiment(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> dict:
    """Compose the lab's config with ``overrides`` (as on the command line) and run it; returns its metrics.
    Outputs go to ``output_dir`` (a fresh temporary folder where None)."""
    from retrieval_lab.main import train

    folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="retrieval_lab-"))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="retrieval_lab.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*overrides, f"paths.output_dir={folder}"])
    finally:
        GlobalHydra.instance().clear()
    return train(cfg)
