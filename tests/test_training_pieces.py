"""The training pieces alone: InfoNCE (and its DDP gather), negative samplers, the resumable sampler, export."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from retrieval_lab.data.beir import Document
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.export import export_encoder
from retrieval_lab.negatives.bm25 import BM25Negatives
from retrieval_lab.negatives.random import RandomNegatives
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.objectives.masking import batch_labels
from retrieval_lab.training.data import EpochShuffleSampler, TrainingCollator
from tests.conftest import TINY_BERT, TRAIN_CORPUS


def dot(a, b):
    return a @ b.T


def test_infonce_is_cross_entropy_over_all_documents():
    torch.manual_seed(0)
    q, d = torch.randn(3, 4), torch.randn(9, 4)  # 3 positives then 6 hard negatives
    expected = -torch.log_softmax(q @ d.T / 0.05, dim=1)[torch.arange(3), torch.arange(3)].mean()
    assert torch.allclose(InfoNCE(0.05, mask_false_negatives=False)(q, d, dot), expected)
    with pytest.raises(ValueError, match="B \\* \\(1 \\+ n\\)"):
        InfoNCE()(q, d[:7], dot)


def _gather_worker(rank: int, world: int, port: int, q, d, out, labels=None) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    n_q = q.shape[0] // world
    q_local = q[rank * n_q : (rank + 1) * n_q].clone().requires_grad_()
    # local layout: this rank's positives first, then its negatives (as the collator builds it)
    pos, neg = d[: q.shape[0]], d[q.shape[0] :]
    k = neg.shape[0] // world
    d_local = torch.cat([pos[rank * n_q : (rank + 1) * n_q], neg[rank * k : (rank + 1) * k]]).requires_grad_()
    masked = labels is not None
    loss = InfoNCE(0.1, mask_false_negatives=masked)(q_local, d_local, dot, labels=labels[rank] if masked else None)
    loss.backward()
    out[rank] = (loss.detach(), q_local.grad, d_local.grad)
    dist.destroy_process_group()


def test_infonce_gathers_documents_across_ranks_with_gradients():
    """Two gloo ranks, each with half the queries, score against the global batch: the mean of their losses is
    the loss of the global batch, and the summed gradients reach every rank's documents."""
    torch.manual_seed(0)
    q, d = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(8, 8), dim=1)  # 4 pos + 4 neg
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, random.randint(20000, 40000), q, d, out), nprocs=2)
    # the same global batch in one process: rank-ordered documents [pos0, pos1, neg0, neg1 | pos2, pos3, ...]
    d_global = torch.cat([d[0:2], d[4:6], d[2:4], d[6:8]])
    scores = q @ d_global.T / 0.1
    losses = [F.cross_entropy(scores[0:2], torch.tensor([0, 1])), F.cross_entropy(scores[2:4], torch.tensor([4, 5]))]
    assert torch.allclose((out[0][0] + out[1][0]) / 2, sum(losses) / 2, atol=1e-6)
    assert torch.allclose(out[0][0], losses[0], atol=1e-6)
    d_ref = d_global.clone().requires_grad_()
    sum(F.cross_entropy(q[i : i + 2] @ d_ref.T / 0.1, torch.tensor([j, j + 1])) for i, j in ((0, 0), (2, 4))).backward()
    assert torch.allclose(out[0][2], d_ref.grad[0:4], atol=1e-6)  # rank 0's documents get both ranks' gradients
    assert torch.allclose(out[1][2], d_ref.grad[4:8], atol=1e-6)


def test_masking_across_ranks_sees_every_rank_s_documents():
    """Queries 0 (rank 0) and 2 (rank 1) share the positive A: each rank masks the other's copy of A."""
    torch.manual_seed(0)
    q, d = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(8, 8), dim=1)
    positives, negatives = ["A", "B", "A", "C"], ["X", "Y", "Z", "W"]
    labels = [batch_labels(positives[r * 2 : r * 2 + 2] + negatives[r * 2 : r * 2 + 2],
                           [[p] for p in positives[r * 2 : r * 2 + 2]]) for r in range(2)]  # fmt: skip
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, random.randint(20000, 40000), q, d, out, labels), nprocs=2)
    d_global = torch.cat([d[0:2], d[4:6], d[2:4], d[6:8]])  # [A, B, X, Y | A, C, Z, W]
    scores = q @ d_global.T / 0.1
    scores[0, 4] = scores[2, 0] = float("-inf")  # q0 against rank 1's A; q2 against rank 0's A
    losses = [F.cross_entropy(scores[0:2], torch.tensor([0, 1])), F.cross_entropy(scores[2:4], torch.tensor([4, 5]))]
    assert torch.allclose(out[0][0], losses[0], atol=1e-6) and torch.allclose(out[1][0], losses[1], atol=1e-6)


CORPUS = {d: Document(title, text) for d, (title, text) in TRAIN_CORPUS.items()}
QUERIES = {"a": "aspirin patients", "b": "insulin trials"}
POSITIVES = {"a": {"t0"}, "b": {"t1"}}


def test_bm25_negatives_exclude_positives_are_seeded_and_hard():
    sampler = BM25Negatives(num_negatives=2, top_k=5, show_progress=False)
    sampler.prepare(CORPUS, QUERIES, POSITIVES)
    assert all(len(c) <= 5 and not set(c) & POSITIVES[q] for q, c in sampler.candidates.items())
    draws = [sampler.sample("a", POSITIVES["a"], random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) == 2 and "t0" not in draws[0]
    assert set(draws[0]) <= set(sampler.candidates["a"])


def test_bm25_negatives_refuse_more_negatives_than_top_k():
    with pytest.raises(ValueError, match="larger than negatives.top_k"):
        BM25Negatives(num_negatives=4, top_k=3)


def test_random_negatives_never_return_a_positive():
    sampler = RandomNegatives(num_negatives=3)
    sampler.prepare(CORPUS, QUERIES, POSITIVES)
    rng = random.Random(0)
    for _ in range(50):
        picked = sampler.sample("a", {"t0", "t1"}, rng)
        assert len(set(picked)) == 3 and not {"t0", "t1"} & set(picked)


def test_collator_can_train_on_shorter_texts_than_the_model_encodes():
    encoder = BiEncoder(config_overrides=TINY_BERT, query_max_length=12, doc_max_length=24)
    long = " ".join(["word"] * 100)
    items = [{"query": long, "positive": long, "negatives": [long]}] * 2
    full = TrainingCollator(encoder)(items)
    short = TrainingCollator(encoder, query_max_length=6, doc_max_length=10)(items)
    assert full["queries"]["input_ids"].shape == (2, 12) and full["docs"]["input_ids"].shape == (4, 24)
    assert short["queries"]["input_ids"].shape == (2, 6) and short["docs"]["input_ids"].shape == (4, 10)
    assert encoder.tokenize_docs([long])["input_ids"].shape == (1, 24)  # inference keeps the model's length
    longer = TrainingCollator(encoder, doc_max_length=100)(items)  # never longer than the model's
    assert longer["docs"]["input_ids"].shape == (4, 24)
    assert short["docs"]["input_ids"][0, -1] == encoder.tokenizer.sep_token_id  # cut, not just sliced


def test_sampler_is_epoch_seeded_resumable_and_sharded():
    sampler = EpochShuffleSampler(num_examples=22, batch_size=4, seed=3)
    sampler.set_epoch(1)
    full = list(sampler)
    assert len(full) == len(sampler) == 20 and len(set(full)) == 20  # 5 whole batches, the rest dropped
    sampler.skip_batches(2)
    assert list(sampler) == full[8:] and list(sampler) == full  # skipping is once
    sampler.set_epoch(2)
    assert list(sampler) != full
    ranks = [EpochShuffleSampler(22, 4, 3, rank=r, world_size=2) for r in (0, 1)]
    shards = [set(list(s)) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 8 and not shards[0] & shards[1]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pooling": "cls", "projection_dim": 16, "query_prefix": "query: "}, {"normalize": False}],
)
def test_export_loads_in_sentence_transformers_with_the_same_vectors(tmp_path, kwargs):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT, doc_max_length=32, query_max_length=32, **kwargs)
    written = export_encoder(encoder, tmp_path / "export")
    model = SentenceTransformer(written["sentence-transformers"], device="cpu")
    texts = [f"{t} {x}" for t, x in TRAIN_CORPUS.values()][:6]
    ours = encode_texts(encoder, texts, "docs", precision="fp32", show_progress=False)
    theirs = model.encode(texts, prompt_name="document", convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    ours_q = encode_texts(encoder, texts, "queries", precision="fp32", show_progress=False)
    np.testing.assert_allclose(model.encode(texts, prompt_name="query"), ours_q, atol=1e-5)
    hf = written["hf"]
    assert (tmp_path / "export" / "hf" / "config.json").exists() and hf == written["sentence-transformers"]
    # The lab reloads the whole encoder from export/hf: pooling, projection, normalisation and prompts.
    reloaded = BiEncoder(hf)
    np.testing.assert_allclose(encode_texts(reloaded, texts, "queries", precision="fp32", show_progress=False), ours_q,
                               atol=1e-5)  # fmt: skip


def test_separate_towers_export_one_complete_model_each(tmp_path):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT, shared=False, projection_dim=8, query_prefix="q: ")
    with torch.no_grad():
        for p in encoder.doc_tower.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the towers differ, as after training
    written = export_encoder(encoder, tmp_path / "export")
    assert set(written) == {"hf"}
    texts = [f"{t} {x}" for t, x in TRAIN_CORPUS.values()][:4]
    for side, tower in (("queries", "query"), ("docs", "doc")):
        model = SentenceTransformer(str(Path(written["hf"]) / tower), device="cpu")
        ours = encode_texts(encoder, texts, side, precision="fp32", show_progress=False)
        theirs = model.encode(texts, prompt_name="query" if side == "queries" else "document")
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
