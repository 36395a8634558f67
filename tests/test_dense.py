"""The dense path end to end with a tiny random-init BERT: encoding, FAISS, evaluation outputs."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from retrieval_lab.data.beir import Document
from retrieval_lab.index import encode
from retrieval_lab.index.encode import bf16_copy, encode_texts, resolve_precision
from retrieval_lab.index.faiss_index import FaissIndex
from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.training import module as module_code
from retrieval_lab.training.data import TrainingCollator
from tests.conftest import TINY_BERT, TINY_CORPUS, TINY_MODEL_OVERRIDES, TINY_QUERIES


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return BiEncoder(config_overrides=TINY_BERT, doc_max_length=16)


TEXTS = [f"{t} {x}" for t, x in TINY_CORPUS.values()] + ["a", "a much longer text " * 10]


def test_length_sorted_batches_keep_input_order(tiny_encoder):
    batched = encode_texts(tiny_encoder, TEXTS, batch_size=3, precision="fp32", show_progress=False)
    one_by_one = np.stack([encode_texts(tiny_encoder, [t], precision="fp32", show_progress=False)[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_bf16_is_close_and_restores_fp32_weights(tiny_encoder):
    before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    fp32 = encode_texts(tiny_encoder, TEXTS, precision="fp32", show_progress=False)
    for precision in ("bf16", "bf16-autocast"):
        bf16 = encode_texts(tiny_encoder, TEXTS, precision=precision, show_progress=False)
        assert (fp32 * bf16).sum(1).min() > 0.98
    for key, value in tiny_encoder.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key


def test_bf16_encoding_leaves_the_training_module_untouched(tiny_encoder):
    # Mid-training state: train mode, gradients from a backward pass. A bf16 evaluation must not cast the live
    # weights or their gradients, not even and back (that hung DDP training on bf16-native CPUs, issue 13).
    tiny_encoder.train()
    batch = tiny_encoder.tokenize_docs(TEXTS)
    tiny_encoder.encode_docs(batch).sum().backward()
    params = dict(tiny_encoder.named_parameters())
    before = {k: (p.data.clone(), p.data.data_ptr(), p.grad) for k, p in params.items()}
    before = {k: (data, ptr, None if grad is None else grad.clone()) for k, (data, ptr, grad) in before.items()}
    assert sum(grad is not None for _, _, grad in before.values()) > len(before) // 2
    for precision in ("bf16", "bf16-autocast", "auto"):
        encode_texts(tiny_encoder, TEXTS, precision=precision, show_progress=False)
    assert tiny_encoder.training
    assert dict(tiny_encoder.named_parameters()) == params  # the very same Parameter objects
    for key, p in params.items():
        data, ptr, grad = before[key]
        assert p.dtype == torch.float32 and p.data.data_ptr() == ptr and torch.equal(p.data, data), key
        assert (p.grad is None) if grad is None else (p.grad.dtype == torch.float32 and torch.equal(p.grad, grad)), key


def test_bf16_copy_runs_in_bf16_without_gradients(tiny_encoder):
    copy_ = bf16_copy(tiny_encoder)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad and p.grad is None for p in copy_.parameters())
    assert not copy_.training and all(p.dtype == torch.float32 for p in tiny_encoder.parameters())


def test_int8_runs_quantized_linear_layers_on_a_copy(tiny_encoder):
    before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    fp32 = encode_texts(tiny_encoder, TEXTS, precision="fp32", show_progress=False)
    int8 = encode_texts(tiny_encoder, TEXTS, precision="int8", show_progress=False)
    assert not np.array_equal(int8, fp32)  # quantized: the vectors move ...
    assert float((int8 * fp32).sum(1).min()) > 0.95  # ... but little (unit vectors: cosine to fp32's)
    copy_ = encode.int8_copy(tiny_encoder)
    quantized = [m for m in copy_.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == sum(isinstance(m, torch.nn.Linear) for m in tiny_encoder.modules()) > 0
    for key, value in tiny_encoder.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="CPU only"):
        with encode._inference_encoder(tiny_encoder, "int8", torch.device("cuda")):
            pass


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "speedup", "expected"),
    [
        (True, True, None, "bf16-autocast"),
        (False, True, 0.56, "fp32"),
        (False, True, 1.9, "bf16-autocast"),
        (False, False, None, "fp32"),
    ],
)
def test_auto_picks_bf16_only_where_it_is_faster(monkeypatch, amx, avx512_bf16, speedup, expected):
    # AVX512-BF16 without AMX measured 0.56x fp32 on a 2048 matmul here: the flag alone does not make bf16 fast.
    # AVX2 (no flag) is never measured: emulated bf16 would take seconds.
    def measured():
        assert speedup is not None, "measured where it must not be"
        return speedup

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(encode, "cpu_bf16_speedup", measured)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_the_bf16_measurement_is_handed_to_later_processes_not_remeasured(monkeypatch):
    # DDP ranks Lightning starts inherit the environment: a figure found there is used as measured, so every rank
    # resolves auto as its parent did (measured per process on a busy CPU, two ranks once chose differently)
    monkeypatch.delenv(encode.SPEEDUP_ENV, raising=False)
    encode.cpu_bf16_speedup.cache_clear()
    try:
        measured = encode.cpu_bf16_speedup(64, 1)
        assert os.environ[encode.SPEEDUP_ENV] == f"{measured:.4f}"
        monkeypatch.setenv(encode.SPEEDUP_ENV, "7.25")
        monkeypatch.setattr(torch, "randn", lambda *a, **k: pytest.fail("measured although the figure was given"))
        encode.cpu_bf16_speedup.cache_clear()
        assert encode.cpu_bf16_speedup() == 7.25
        monkeypatch.setenv(encode.SPEEDUP_ENV, "fast")
        encode.cpu_bf16_speedup.cache_clear()
        with pytest.raises(ValueError, match="RETRIEVAL_LAB_CPU_BF16_SPEEDUP must be a number"):
            encode.cpu_bf16_speedup()
    finally:
        encode.cpu_bf16_speedup.cache_clear()


def test_auto_precision_and_bad_values(tiny_encoder):
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16-autocast")
    with pytest.raises(ValueError, match="precision must be one of"):
        encode_texts(tiny_encoder, TEXTS, precision="fp8")
    with pytest.raises(ValueError, match="side must be one of"):
        encode_texts(tiny_encoder, TEXTS, side="passages")


def test_faiss_index_search_save_load(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # unit vectors: each is its own nearest neighbour
    index = FaissIndex(8, "Flat", nprobe=3, ef_search=5, refine_k_factor=7)  # knobs Flat ignores, kept by save
    index.add(vectors, [f"d{i}" for i in range(50)])
    scores, ids = index.search(vectors[:3], k=5)
    assert [row[0] for row in ids] == ["d0", "d1", "d2"] and scores.shape == (3, 5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_allclose(scores[:, 0], (vectors[:3] @ vectors.T).max(1), rtol=1e-5)
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # overwriting goes through a temporary name too
    loaded = FaissIndex.load(tmp_path / "idx")
    assert loaded.search(vectors[:3], k=5)[1] == ids and len(loaded) == 50
    assert loaded.search_knobs == {"nprobe": 3, "ef_search": 5, "refine_k_factor": 7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_bad_factory_is_refused():
    with pytest.raises(ValueError, match="not a valid FAISS factory"):
        FaissIndex(8, "NoSuchIndex")


def test_dense_evaluate_end_to_end(compose_cfg, tmp_path):
    cfg = compose_cfg(["task=evaluate", "retriever=dense", "retriever.show_progress=false", *TINY_MODEL_OVERRIDES])
    metrics = train(cfg)
    out = tmp_path / "out"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics and set(on_disk) == {"test", "retrieval"}
    assert on_disk["retrieval"]["encode_corpus_s"] > 0 and on_disk["retrieval"]["search_s_per_query"] > 0
    assert set(on_disk["test"]) >= {"ndcg@10", "mrr@10", "recall@100", "map@100"}
    lines = (out / "run.test.trec").read_text().splitlines()
    assert {line.split()[0] for line in lines} == {"q1", "q2", "q3"}
    assert len(lines) == 3 * len(TINY_CORPUS)  # top_k 100 > corpus size: every document ranked
    assert "retriever:" in (out / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.data
def test_packaged_minilm_reproduces_mteb_on_scifact(compose_cfg, shared_data):
    cfg = compose_cfg(
        ["task=evaluate", "data=scifact", "retriever=dense", "retriever.show_progress=false"], data_root=shared_data
    )
    metrics = train(cfg)
    assert 0.635 <= metrics["test"]["ndcg@10"] <= 0.655  # MTEB reports 0.6451


@pytest.mark.parametrize(
    ("factory", "knob"), [("HNSW8", "ef_search"), ("IVF2,Flat", "nprobe"), ("IVF1,SQ4,Refine(Flat)", "refine_k_factor")]
)
def test_approximate_factories_take_their_search_parameters_from_the_config(compose_cfg, factory, knob):
    import faiss

    corpus = {d: Document(text=text, title=title) for d, (title, text) in TINY_CORPUS.items()}

    def run(overrides):
        cfg = compose_cfg(["retriever=dense", "retriever.show_progress=false", *TINY_MODEL_OVERRIDES, *overrides])
        torch.manual_seed(0)  # the same random-init encoder for both runs
        retriever = instantiate(cfg.retriever)
        retriever.index(corpus)
        return retriever, retriever.search(TINY_QUERIES, 3)

    # nprobe 2 of 2 lists, efSearch 64 over 6 documents, 64 x 3 candidates re-ranked exactly: exhaustive
    value = 2 if knob == "nprobe" else 64
    retriever, approximate = run([f"retriever.index_factory='{factory}'", f"retriever.{knob}={value}"])
    index = faiss.downcast_index(retriever.faiss.index)
    set_value = {"nprobe": lambda: faiss.extract_index_ivf(index).nprobe, "ef_search": lambda: index.hnsw.efSearch,
                 "refine_k_factor": lambda: index.k_factor}[knob]()  # fmt: skip
    assert set_value == value
    _, exact = run([])
    assert {q: list(d) for q, d in approximate.items()} == {q: list(d) for q, d in exact.items()}


@pytest.mark.parametrize("knob", ["nprobe", "ef_search", "refine_k_factor"])
def test_a_search_knob_below_one_is_refused_naming_its_key(compose_cfg, knob):
    cfg = compose_cfg(
        ["retriever=dense", "retriever.show_progress=false", *TINY_MODEL_OVERRIDES, f"retriever.{knob}=0"]
    )
    with pytest.raises(Exception, match=rf"{knob} must be >= 1, got 0 \(retriever\.{knob}\)"):  # hydra wraps it
        instantiate(cfg.retriever)


def test_attention_kernels_leave_out_cudnn_on_cuda_only():
    """cuDNN attention rebuilds a graph for every new padded length (5.7x slower bf16 encoding on an H200)."""
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with encode.attention_kernels("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled()
    with encode.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()


def _recording_kernels(calls: list):
    @contextlib.contextmanager
    def record(device):
        calls.append(torch.device(device).type)
        yield

    return record


def test_encoding_and_training_steps_run_under_the_attention_choice(tiny_encoder, monkeypatch):
    calls = []
    monkeypatch.setattr(encode, "attention_kernels", _recording_kernels(calls))
    encode_texts(tiny_encoder, TEXTS, precision="fp32", show_progress=False)
    assert calls == ["cpu"]

    calls.clear()
    monkeypatch.setattr(module_code, "attention_kernels", _recording_kernels(calls))
    encoder = BiEncoder(config_overrides=TINY_BERT, doc_max_length=16)
    objective = InfoNCE(0.05, mask_false_negatives=False)
    module = module_code.RetrievalModule(encoder, objective, lambda params: torch.optim.AdamW(params, lr=1e-4))
    pairs = zip(TINY_QUERIES.values(), TINY_CORPUS.values(), strict=False)
    items = [{"query": q, "positive": f"{t} {x}", "negatives": []} for q, (t, x) in pairs]
    loader = DataLoader(items, batch_size=2, collate_fn=TrainingCollator(encoder))
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    assert calls == ["cpu", "cpu"]
