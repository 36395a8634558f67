"""ColBERT and TCT-ColBERT with tiny random-init BERTs: MaxSim, tokenization, training, export, retrieval, fusion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from retrieval_lab.data.beir import Document
from retrieval_lab.index.encode import encode_texts
from retrieval_lab.index.multi_vector import MultiVectorIndex, encode_token_vectors
from retrieval_lab.main import train
from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.models.export import export_encoder
from retrieval_lab.negatives import table as tables
from retrieval_lab.negatives.mining import mine_ann_negatives
from retrieval_lab.objectives.pairwise import PairwiseSoftmax
from retrieval_lab.objectives.tct import tct_kd_loss
from retrieval_lab.retrievers.bm25 import BM25Retriever
from retrieval_lab.retrievers.colbert import ColbertRetriever
from retrieval_lab.retrievers.hybrid import interpolate, reciprocal_rank_fusion
from retrieval_lab.scoring.maxsim import blocked_maxsim, maxsim_scores, packed_maxsim, padded_blocks, segment_maxsim
from retrieval_lab.training.data import TrainingCollator
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_BERT, TINY_MODEL_OVERRIDES, TRAIN_CORPUS
from tests.helpers import assert_scored_from_its_run
from tests.test_ance import ANCE, _train_positives

CORPUS = {did: Document(title, text) for did, (title, text) in TRAIN_CORPUS.items()}
QUERIES = {f"q{i}": f"what does {did} {doc.title.lower()} do" for i, (did, doc) in enumerate(CORPUS.items())}


def exact_search(index: MultiVectorIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, list[str]]:
    """The reference: exact MaxSim of one query over every document of ``index``, top ``k`` (scores, ids)."""
    scores, rows = index.rerank(q, np.arange(len(index.ids)), k)
    return scores, [index.ids[r] for r in rows]


@pytest.fixture(scope="module")
def tiny_colbert() -> ColBERT:
    torch.manual_seed(0)
    return ColBERT(config_overrides=TINY_BERT, dim=16, doc_max_length=24).eval()


def brute_force_maxsim(q, d, q_mask, d_mask) -> torch.Tensor:
    out = torch.zeros(len(q), len(d))
    for a in range(len(q)):
        for b in range(len(d)):
            for i in range(q.shape[1]):
                if q_mask[a, i]:
                    sims = [float(q[a, i] @ d[b, j]) for j in range(d.shape[1]) if d_mask[b, j]]
                    out[a, b] += max(sims) if sims else 0.0
    return out


def test_maxsim_matches_brute_force_with_masks():
    torch.manual_seed(1)
    q, d = torch.randn(3, 5, 8), torch.randn(4, 7, 8)
    q_mask, d_mask = torch.rand(3, 5) > 0.3, torch.rand(4, 7) > 0.4
    d_mask[2] = False  # a document with no token scores 0
    expected = brute_force_maxsim(q, d, q_mask, d_mask)
    torch.testing.assert_close(maxsim_scores(q, d, q_mask, d_mask), expected)
    # Without masks, zero vectors are the masked tokens: the same scores.
    zeroed_q, zeroed_d = q * q_mask[..., None], d * d_mask[..., None]
    torch.testing.assert_close(maxsim_scores(zeroed_q, zeroed_d), expected)
    assert expected[:, 2].eq(0).all() and expected.ne(0).any()


def test_packed_maxsim_matches_padded():
    rng = np.random.default_rng(0)
    lengths = np.array([3, 1, 6, 2])
    tokens = rng.standard_normal((lengths.sum(), 8)).astype(np.float16)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    padded = torch.zeros(len(lengths), lengths.max(), 8)
    mask = torch.zeros(len(lengths), lengths.max(), dtype=torch.bool)
    for i, (start, n) in enumerate(zip(np.cumsum(lengths) - lengths, lengths, strict=True)):
        padded[i, :n], mask[i, :n] = torch.from_numpy(tokens[start : start + n].astype(np.float32)), True
    expected = maxsim_scores(torch.from_numpy(q)[None], padded, d_mask=mask)[0].numpy()
    np.testing.assert_allclose(packed_maxsim(q, tokens, lengths), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("docs_per_block", [1, 3, 100])
def test_blocked_maxsim_matches_segment_maxsim(docs_per_block):
    rng = np.random.default_rng(1)
    lengths = torch.tensor([3, 1, 6, 2, 6, 1, 4])
    tokens = torch.from_numpy(rng.standard_normal((int(lengths.sum()), 8)).astype(np.float32))
    queries = torch.from_numpy(rng.standard_normal((3, 5, 8)).astype(np.float32))
    queries[1, 3:] = 0  # a shorter query padded with zero vectors scores as the short query alone
    blocks = padded_blocks(tokens, lengths, docs_per_block)
    assert sorted(int(r) for rows, _ in blocks for r in rows) == list(range(len(lengths)))
    expected = segment_maxsim(tokens, lengths, queries)  # (3, 7)
    torch.testing.assert_close(blocked_maxsim(blocks, queries, len(lengths)), expected)
    torch.testing.assert_close(expected[1], segment_maxsim(tokens, lengths, queries[1:2, :3])[0])
    with pytest.raises(ValueError, match="at least one token vector"):
        padded_blocks(tokens, torch.tensor([0, int(lengths.sum())]))


def test_colbert_tokens_markers_masks_and_vectors(tiny_colbert):
    tok = tiny_colbert.tokenizer
    queries = tiny_colbert.tokenize_queries(["aspirin heart attack?"])
    ids = queries["input_ids"][0].tolist()
    assert len(ids) == 32 and ids[:2] == [tok.cls_token_id, tiny_colbert.query_marker_id]
    assert ids[ids.index(tok.sep_token_id) + 1 :] == [tok.mask_token_id] * (31 - ids.index(tok.sep_token_id))
    docs = tiny_colbert.tokenize_docs(["Aspirin, reduces risk.", "a much longer document about smoking and cancer"])
    assert docs["input_ids"][0, 1] == tiny_colbert.doc_marker_id
    with torch.no_grad():
        q, d = tiny_colbert.encode_queries(queries), tiny_colbert.encode_docs(docs)
    assert q.shape == (1, 32, 16) and torch.allclose(q.norm(dim=-1), torch.ones(1, 32))
    punctuation = torch.isin(docs["input_ids"], torch.tensor(tok.convert_tokens_to_ids([",", "."])))
    dropped = punctuation | docs["attention_mask"].eq(0)
    assert punctuation.sum() == 2 and d.norm(dim=-1)[dropped].eq(0).all()
    torch.testing.assert_close(d.norm(dim=-1)[~dropped], torch.ones(int((~dropped).sum())))
    # The index's encoding path (unpadded ids, length-sorted batches) gives the same kept vectors.
    tokens, lengths = encode_token_vectors(tiny_colbert, ["Aspirin, reduces risk."], precision="fp32",
                                           show_progress=False)  # fmt: skip
    np.testing.assert_allclose(tokens.astype(np.float32), d[0][~dropped[0]].numpy(), atol=2e-3)
    assert lengths.tolist() == [int((~dropped[0]).sum())]


def training_batch(encoder, n_queries: int = 4) -> dict:
    items = [
        {"query": QUERIES[f"q{i}"], "positive": CORPUS[f"t{i}"].full_text(),
         "negatives": [CORPUS[f"t{i + n_queries}"].full_text()],
         "doc_ids": [f"t{i}", f"t{i + n_queries}"], "relevant": [f"t{i}"]}
        for i in range(n_queries)
    ]  # fmt: skip
    return TrainingCollator(encoder)(items)


@pytest.mark.parametrize("objective", ["infonce", "pairwise"])
def test_tiny_colbert_loss_goes_down(compose_cfg, objective):
    # MaxSim scores are sums over 32 query tokens: ColBERT's softmax runs on them as they are (temperature 1).
    overrides = [f"objective={objective}", "objective.temperature=1.0", "model=colbert", "model.query_max_length=16"]
    overrides += ["model.doc_max_length=24"]
    cfg = compose_cfg([*overrides, *TINY_MODEL_OVERRIDES])
    torch.manual_seed(0)
    module = instantiate(cfg.module)(encoder=instantiate(cfg.model), objective=instantiate(cfg.objective))
    batch = training_batch(module.encoder)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = module(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_pairwise_needs_hard_negatives():
    with pytest.raises(ValueError, match="hard negatives"):
        PairwiseSoftmax()(torch.randn(2, 4), torch.randn(2, 4), lambda a, b: a @ b.T)


def test_tct_loss_zero_iff_scores_equal():
    torch.manual_seed(2)
    scores = torch.randn(4, 12)
    assert tct_kd_loss(scores, scores.clone(), 0.25).item() == 0.0
    assert tct_kd_loss(scores + 3.0, scores, 0.25).abs().item() < 1e-6  # a per-query shift is the same softmax
    assert tct_kd_loss(scores.flip(1), scores, 0.25).item() > 0.1
    # each side at its own temperature: a teacher on a 20x scale matches a student at a 20x smaller temperature
    assert tct_kd_loss(scores, 20 * scores, 0.05, teacher_temperature=1.0).abs().item() < 1e-5
    assert tct_kd_loss(scores, 20 * scores, 0.05).item() > 0.05  # one temperature for both: they differ


def test_colbert_export_round_trip(tiny_colbert, tmp_path):
    written = export_encoder(tiny_colbert, tmp_path / "export")
    reloaded = ColBERT(model_name=written["colbert"]).eval()
    assert reloaded.settings == tiny_colbert.settings
    batch = tiny_colbert.tokenize_docs(["Smoking causes lung cancer."])
    assert torch.equal(reloaded.tokenize_docs(["Smoking causes lung cancer."])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_docs(batch), tiny_colbert.encode_docs(batch))
    with pytest.raises(ValueError, match="projection"):
        ColBERT(model_name=written["colbert"], dim=8)


def test_tct_distill_trains_the_student_only(compose_cfg, tiny_colbert, tmp_path):
    teacher_dir = export_encoder(tiny_colbert, tmp_path / "teacher")["colbert"]
    cfg = compose_cfg(["objective=tct_distill", f"objective.teacher.model_name={teacher_dir}", *TINY_MODEL_OVERRIDES])
    module = instantiate(cfg.module)(encoder=instantiate(cfg.model), objective=instantiate(cfg.objective))
    teacher = module.objective.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = training_batch(module.encoder)
    loss = module(batch)
    loss.backward()
    assert loss.item() > 0 and module.encoder.query_tower.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    # The teacher's scores are its MaxSim over its own tokenization of the same texts.
    texts = [QUERIES[f"q{i}"] for i in range(4)]
    with torch.no_grad():
        q = tiny_colbert.encode_queries(tiny_colbert.tokenize_queries(texts))
        expected = tiny_colbert.score(
            q, tiny_colbert.encode_docs(tiny_colbert.tokenize_docs([CORPUS["t0"].full_text()]))
        )
    torch.testing.assert_close(module.objective.teacher_scores(batch)[:, :1], expected, atol=1e-4, rtol=1e-4)


def test_tct_distill_task_train_runs(compose_cfg, tiny_colbert, tmp_path, train_data):
    """The whole training task: checkpoints (teacher inside) load back strictly and the student is evaluated."""
    teacher_dir = export_encoder(tiny_colbert, tmp_path / "teacher")["colbert"]
    overrides = ["data=beir", "data.name=tiny", "objective=tct_distill", f"objective.teacher.model_name={teacher_dir}"]
    cfg = compose_cfg([*overrides, *FAST_TRAIN_OVERRIDES, "trainer.max_epochs=1"], data_root=train_data)
    metrics = train(cfg)
    assert metrics["train"]["steps"] > 0 and metrics["train"]["best_checkpoint"]
    assert_scored_from_its_run(tmp_path / "out", metrics)  # the student, loaded from its checkpoint, was evaluated


def test_end_to_end_search_matches_exact_maxsim(tiny_colbert, tmp_path):
    tokens, lengths = encode_token_vectors(tiny_colbert, [d.full_text() for d in CORPUS.values()], show_progress=False)
    index = MultiVectorIndex(16, "IVF4,Flat", nprobe=4)  # every list visited: candidates hold the exact top-k
    index.add(tokens, lengths, list(CORPUS))
    retriever = ColbertRetriever(tiny_colbert, mode="end_to_end", candidates_per_token=64, show_progress=False)
    for q in retriever.query_vectors(list(QUERIES.values())[:5]):
        exact_scores, exact_ids = exact_search(index, q, 5)
        scores, ids = index.search(q, 5, per_token=len(tokens))
        assert ids == exact_ids and np.allclose(scores, exact_scores)
    index.save(tmp_path / "mv")
    loaded = MultiVectorIndex.load(tmp_path / "mv")
    assert loaded.search(q, 5, per_token=len(tokens))[1] == ids and loaded.nbytes == index.nbytes > tokens.nbytes


def test_end_to_end_candidates_are_the_query_tokens_nearest_tokens(tiny_colbert):
    """With few candidates per token, end to end is not exact by construction: its candidates are the documents of
    each query token's nearest token vectors (brute force here), ranked by exact MaxSim among themselves only."""
    tokens, lengths = encode_token_vectors(tiny_colbert, [d.full_text() for d in CORPUS.values()], show_progress=False)
    index = MultiVectorIndex(16, "IVF4,Flat", nprobe=4)  # every list visited: the nearest tokens are exact
    index.add(tokens, lengths, list(CORPUS))
    owner = np.repeat(np.arange(len(CORPUS)), lengths)  # (T,) the document of each token vector
    stored = index.tokens.astype(np.float32)
    retriever = ColbertRetriever(tiny_colbert, mode="end_to_end", show_progress=False)
    narrower = 0
    for q in retriever.query_vectors(list(QUERIES.values())):
        nearest = np.argsort(-(q @ stored.T), axis=1, kind="stable")[:, :2]  # (Lq, 2)
        expected = np.unique(owner[nearest])
        assert np.array_equal(index.candidates(q, per_token=2), expected)
        narrower += len(expected) < len(CORPUS)
        scores, ids = index.search(q, 3, per_token=2)
        top_scores, top_rows = index.rerank(q, expected, 3)
        assert ids == [index.ids[r] for r in top_rows] and np.allclose(scores, top_scores)
        assert set(ids) <= {index.ids[r] for r in expected}
    assert narrower > 0  # the candidate step did leave documents out


def test_batched_exact_scores_match_one_query_at_a_time(tiny_colbert):
    index = MultiVectorIndex(16, build_ann=False)
    index.add(*encode_token_vectors(tiny_colbert, [d.full_text() for d in CORPUS.values()], show_progress=False),
              list(CORPUS))  # fmt: skip
    retriever = ColbertRetriever(tiny_colbert, mode="end_to_end", show_progress=False)
    queries = retriever.query_vectors(list(QUERIES.values()))
    queries[1] = queries[1][:5]  # a shorter query shares its group, padded with zero vectors
    scores = np.concatenate([block for _, block in index.iter_exact_scores(queries, group=3)])  # (Q, N)
    assert scores.shape == (len(queries), len(CORPUS))
    every_doc = np.arange(len(CORPUS))
    for q, row in zip(queries, scores, strict=True):
        top, rows = index.rerank(q, every_doc, len(CORPUS))
        assert np.allclose(row[rows], top, atol=1e-5)


def test_colbert_mines_exactly_or_end_to_end(tiny_colbert):
    """index_factory Flat mines by exact MaxSim over every document; an IVF visiting every list, with every token a
    candidate, mines the same; the positives' ranks are exact either way."""
    positives = {qid: {did} for qid, did in zip(QUERIES, CORPUS, strict=False)}
    args = {"corpus": CORPUS, "queries": QUERIES, "positives": positives, "top_k": 4}
    exact = mine_ann_negatives(tiny_colbert, index_factory="Flat", **args)
    store = MultiVectorIndex(16, build_ann=False)
    store.add(*encode_token_vectors(tiny_colbert, [d.full_text() for d in CORPUS.values()], show_progress=False),
              list(CORPUS))  # fmt: skip
    retriever = ColbertRetriever(tiny_colbert, mode="exact", show_progress=False)
    expected_ranks = []
    for qid, q in zip(QUERIES, retriever.query_vectors(list(QUERIES.values())), strict=True):
        scores, ranked = exact_search(store, q, len(CORPUS))
        assert exact.negatives[qid] == [d for d in ranked if d not in positives[qid]][:4]
        expected_ranks.append(1 + int((scores > scores[ranked.index(next(iter(positives[qid])))]).sum()))
    assert exact.positive_ranks == expected_ranks
    ivf = mine_ann_negatives(tiny_colbert, index_factory="IVF2,Flat", **args)  # nprobe 32: every list visited
    assert ivf.negatives == exact.negatives and ivf.positive_ranks == exact.positive_ranks


def test_colbert_index_can_cut_documents_shorter(tiny_colbert):
    texts = [d.full_text() for d in CORPUS.values()]
    full = ColbertRetriever(tiny_colbert, mode="end_to_end", show_progress=False)
    short = ColbertRetriever(tiny_colbert, mode="end_to_end", show_progress=False, doc_max_length=6)
    full.index(CORPUS)
    short.index(CORPUS)
    assert short.store.lengths.max() <= 6 < full.store.lengths.max()
    assert ColbertRetriever(tiny_colbert, doc_max_length=10**6, first_stage=BM25Retriever()).doc_max_length == (
        tiny_colbert.doc_max_length
    )  # never longer than the model's
    with pytest.raises(ValueError, match="doc_max_length"):
        ColbertRetriever(tiny_colbert, mode="end_to_end", doc_max_length=1)
    with pytest.raises(ValueError, match="token vectors"):
        encode_texts(tiny_colbert, texts[:2], show_progress=False)


@pytest.mark.parametrize("mode", ["rerank", "end_to_end", "exact"])
def test_colbert_retriever_modes(tiny_colbert, mode):
    first = BM25Retriever(show_progress=False)
    retriever = ColbertRetriever(tiny_colbert, mode=mode, first_stage=first, rerank_depth=5,
                                 candidates_per_token=10_000, show_progress=False)  # fmt: skip
    run = retriever.retrieve(CORPUS, QUERIES, k=3)
    assert set(run) == set(QUERIES) and all(0 < len(docs) <= 3 for docs in run.values())
    assert retriever.index_bytes > 0 and retriever.timings["search_s_per_query"] > 0
    exact = MultiVectorIndex(16, build_ann=False)
    exact.add(*encode_token_vectors(tiny_colbert, [d.full_text() for d in CORPUS.values()], show_progress=False),
              list(CORPUS))  # fmt: skip
    bm25 = first.search(QUERIES, 5) if mode == "rerank" else None
    for qid, q in zip(QUERIES, retriever.query_vectors(list(QUERIES.values())), strict=True):
        if mode == "rerank":  # the first stage's top 5, re-ordered by MaxSim
            assert set(run[qid]) <= set(bm25[qid])
            rows = np.array([exact.ids.index(d) for d in bm25[qid]])
            assert list(run[qid]) == [exact.ids[r] for r in exact.rerank(q, rows, 3)[1]]
        else:  # exact; or a Flat index and every token a candidate: end to end is exact
            assert list(run[qid]) == exact_search(exact, q, 3)[1]
            assert np.allclose(list(run[qid].values()), exact_search(exact, q, 3)[0], atol=1e-5)


def test_colbert_retriever_refuses_single_vectors(compose_cfg):
    cfg = compose_cfg(["retriever=colbert", "retriever.show_progress=false", *TINY_MODEL_OVERRIDES])
    with pytest.raises(ValueError, match="model=colbert"):
        instantiate(cfg.retriever).index(CORPUS)


@pytest.mark.parametrize("retriever", ["colbert", "hybrid"])
def test_evaluate_task_with_colbert_and_hybrid(compose_cfg, tmp_path, retriever):
    overrides = ["task=evaluate", f"retriever={retriever}", "model=colbert", *TINY_MODEL_OVERRIDES]
    if retriever == "hybrid":
        overrides += ["retriever@retriever.dense=colbert", "retriever.dense.mode=end_to_end", "retriever.fusion=rrf",
                      "retriever.sparse.show_progress=false", "retriever.dense.show_progress=false"]  # fmt: skip
    else:
        overrides += ["retriever.show_progress=false"]
    metrics = train(compose_cfg(overrides))
    assert_scored_from_its_run(tmp_path / "out", metrics)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    if retriever == "colbert":  # the index size and query latency are reported with the metrics
        assert metrics["retrieval"]["index_bytes"] > 0 and metrics["retrieval"]["search_s_per_query"] > 0


def test_fusions_rank_as_their_sides():
    sparse = {"q": {"a": 9.0, "b": 5.0, "c": 1.0}}
    dense = {"q": {"b": 0.9, "c": 0.8, "d": 0.1}}
    order = lambda run: sorted(run["q"], key=lambda d: (-run["q"][d], d))  # noqa: E731
    assert order(interpolate(sparse, dense, alpha=0.0))[:3] == ["a", "b", "c"]
    assert order(interpolate(sparse, dense, alpha=1.0))[:2] == ["b", "c"]
    assert order(interpolate(sparse, dense, alpha=0.5))[0] == "b"  # near the top of both
    assert order(reciprocal_rank_fusion([sparse, dense]))[:2] == ["b", "c"]


def test_colbert_trains_with_ance_negatives_through_task_train(compose_cfg, train_data, tmp_path):
    # model=colbert selects retriever=colbert (test evaluation) and temperature 1; dev evaluation and the refresh's
    # mining (index_refresh.index_factory=Flat) are exact MaxSim over every document.
    cfg = compose_cfg([*ANCE, "model=colbert", "retriever.mode=end_to_end"], data_root=train_data)
    assert cfg.retriever._target_.endswith("ColbertRetriever") and cfg.objective.temperature == 1.0
    metrics = train(cfg)
    assert metrics["train"]["best_dev_value"] is not None
    assert_scored_from_its_run(tmp_path / "out", metrics)
    folder, positives = tmp_path / "out" / "ance_tables", _train_positives()
    assert tables.latest_version(folder) == 3
    for version in (1, 2, 3):
        negatives = tables.load(folder, version).negatives
        assert all(len(ids) == 3 and not set(ids) & positives[q] for q, ids in negatives.items())
    assert 1 <= tables.load(folder, 3).meta["positive_mean_rank"] <= len(TRAIN_CORPUS)


def test_task_train_refuses_a_dense_retriever_for_colbert(compose_cfg):
    cfg = compose_cfg([*FAST_TRAIN_OVERRIDES, "model=colbert", "retriever=dense"])
    with pytest.raises(ValueError, match="retriever=colbert"):
        train(cfg)


def test_pca_projection_init_takes_the_backbones_principal_directions(tmp_path):
    torch.manual_seed(0)
    model = ColBERT(config_overrides=TINY_BERT, dim=8, doc_max_length=24, projection_init="pca")
    random_rows = model.projection.weight.detach().clone()
    texts = [f"{doc.title} {doc.text}" for doc in CORPUS.values()]
    model.init_new_parameters(texts)
    weight = model.projection.weight.detach()
    assert not torch.equal(weight, random_rows) and model.training  # set, and the mode restored
    torch.testing.assert_close(weight @ weight.T, torch.eye(8), atol=1e-5, rtol=0)  # orthonormal rows
    # The rows span the top directions: the centred token states keep more variance through them than through
    # any other 8 orthonormal directions (checked against random ones and the old random projection's span).
    batch = model.tokenize_docs(texts, max_length=128)
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
    keep = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], model.skip_ids)
    x = hidden[keep] - hidden[keep].mean(0)
    kept = lambda rows: float((x @ torch.linalg.qr(rows.T).Q).pow(2).sum())  # noqa: E731
    assert kept(weight) > kept(random_rows) and all(kept(weight) > kept(torch.randn(8, 32)) for _ in range(5))
    # A saved projection always wins: an exported model keeps its own and has no new parameters.
    folder = export_encoder(model, tmp_path / "export")["colbert"]
    reloaded = ColBERT(model_name=folder)
    reloaded.init_new_parameters(texts[:1])
    torch.testing.assert_close(reloaded.projection.weight, weight)
    assert reloaded.new_parameter_names() == [] and model.new_parameter_names() == ["projection.weight"]
    with pytest.raises(ValueError, match="projection_init"):
        ColBERT(config_overrides=TINY_BERT, projection_init="identity")
    with pytest.raises(ValueError, match="model.dim <= "):
        ColBERT(config_overrides=TINY_BERT, dim=64, projection_init="pca")  # hidden size 32


def test_new_params_lr_scale_gives_the_new_projection_its_own_lr(compose_cfg):
    overrides = ["model=colbert", "model.query_max_length=16", "model.doc_max_length=24", *TINY_MODEL_OVERRIDES]
    base = compose_cfg(overrides)
    lr = base.module.optimizer.lr
    make = lambda cfg: instantiate(cfg.module)(encoder=instantiate(cfg.model), objective=instantiate(cfg.objective))  # noqa: E731
    plain = make(base).parameter_groups()
    assert [g.get("lr") for g in plain] == [None, None]  # one lr for all: the two groups of old checkpoints
    groups = make(compose_cfg([*overrides, "module.new_params_lr_scale=10"])).parameter_groups()
    assert [g.get("lr") for g in groups] == [None, None, 10 * lr] and groups[2]["params"][0].shape[0] == 128
    assert sum(len(g["params"]) for g in groups) == sum(len(g["params"]) for g in plain)
    # the scaled group decays its weight like the other matrices, and the schedule scales it like the rest
    assert "weight_decay" not in groups[2] and groups[1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="new_params_lr_scale"):
        make(compose_cfg([*overrides, "module.new_params_lr_scale=0"]))


def test_colbert_pca_init_and_scaled_lr_through_task_train(compose_cfg, train_data, monkeypatch):
    seen = []
    init = ColBERT.init_new_parameters
    spy = lambda self, texts: seen.append(len(texts)) or init(self, texts)  # noqa: E731
    monkeypatch.setattr(ColBERT, "init_new_parameters", spy)
    overrides = ["model=colbert", "model.dim=16", "model.projection_init=pca", "module.new_params_lr_scale=5"]
    overrides += ["task.splits=[]"]
    cfg = compose_cfg([*FAST_TRAIN_OVERRIDES, *overrides], data_root=train_data)
    metrics = train(cfg)
    assert metrics["train"]["steps"] > 0 and 0.0 <= metrics["dev"]["ndcg@10"] <= 1.0 and "test" not in metrics
    assert len(seen) == 1 and 0 < seen[0] <= 256  # once, before fit, from (up to 256) training positives
