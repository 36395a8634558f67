"""Gradient caching: the same gradients as the plain full-batch step (without dropout, and with dropout under the
same random draws), the same training run end to end, and clear refusals where it does not apply."""

from __future__ import annotations

import pytest
import torch

from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.objectives.masking import batch_labels
from retrieval_lab.training.grad_cache import grad_cache_loss, split_batch
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_BERT

QUERIES = ["aspirin heart", "vitamin c colds", "smoking cancer", "sleep obesity", "coffee liver", "exercise blood"]


def _setup(dropout: bool, rows: int = 6):
    """``rows`` queries, their positives, then one negative each; query 0 is judged relevant to document 1 too."""
    torch.manual_seed(0)
    overrides = dict(TINY_BERT) | ({} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    encoder = BiEncoder(config_overrides=overrides).train()
    queries = [f"{QUERIES[i % 6]} study {i}" for i in range(rows)]
    docs = [f"document about {q}" for q in queries] + [f"unrelated negative {i}" for i in range(rows)]
    relevant = [["d0", "d1"]] + [[f"d{i}"] for i in range(1, rows)]
    batch = {"queries": dict(encoder.tokenize_queries(queries)), "docs": dict(encoder.tokenize_docs(docs)),
             "labels": batch_labels([f"d{i}" for i in range(2 * rows)], relevant)}  # fmt: skip
    return encoder, InfoNCE(temperature=0.05), batch


def _grads(encoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_same_loss_and_gradients_as_the_full_batch_without_dropout(chunk):
    encoder, objective, batch = _setup(dropout=False)
    plain = objective(encoder.encode_queries(batch["queries"]), encoder.encode_docs(batch["docs"]), encoder.score,
                      labels=batch["labels"])  # fmt: skip
    plain.backward()
    expected = _grads(encoder)
    encoder.zero_grad()
    cached = grad_cache_loss(encoder, objective, batch, chunk)
    got = _grads(encoder)
    assert float(cached) == pytest.approx(float(plain), abs=1e-6) and set(got) == set(expected)
    assert all(torch.allclose(got[n], expected[n], atol=1e-6) for n in expected)


def test_dropout_draws_are_replayed_chunk_by_chunk():
    """The issue's check: fp32, dropout on, a batch of 32 in chunks of 8, every gradient within 1e-5."""
    encoder, objective, batch = _setup(dropout=True, rows=32)
    torch.manual_seed(7)  # the plain step that encodes chunk by chunk with the same random draws
    q = torch.cat([encoder.encode_queries(c) for c in split_batch(batch["queries"], 8)])
    d = torch.cat([encoder.encode_docs(c) for c in split_batch(batch["docs"], 8)])
    plain = objective(q, d, encoder.score, labels=batch["labels"])
    plain.backward()
    expected = _grads(encoder)
    encoder.zero_grad()
    torch.manual_seed(7)
    cached = grad_cache_loss(encoder, objective, batch, 8)
    assert float(cached) == pytest.approx(float(plain), abs=1e-6)
    assert max(float((_grads(encoder)[n] - g).abs().max()) for n, g in expected.items()) < 1e-5


NO_DROPOUT = ["+model.config_overrides.hidden_dropout_prob=0.0", "module.optimizer.lr=1e-3", "task.export=false",
              "+model.config_overrides.attention_probs_dropout_prob=0.0"]  # fmt: skip


def test_a_training_run_with_gradient_caching_matches_the_plain_run(compose_cfg, train_data, tmp_path):
    plain = train(compose_cfg([*FAST_TRAIN_OVERRIDES, *NO_DROPOUT], data_root=train_data))
    weights = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    (tmp_path / "out").rename(tmp_path / "plain")
    cached = train(compose_cfg([*FAST_TRAIN_OVERRIDES, *NO_DROPOUT, "module.grad_cache.chunk_size=2"],
                               data_root=train_data))  # fmt: skip
    again = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert cached["train"]["steps"] == plain["train"]["steps"] == 8
    assert all(torch.allclose(again[k], weights[k], atol=1e-5) for k in weights)  # clipped and stepped alike
    assert cached["test"]["ndcg@10"] == pytest.approx(plain["test"]["ndcg@10"], abs=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["module.grad_cache.chunk_size=0"], "module.grad_cache.chunk_size must be a positive integer"),
        (
            ["module.grad_cache.chunk_size=2", "model=colbert", "retriever=colbert", "objective=pairwise"],
            "not model=colbert",
        ),
    ],
)
def test_where_gradient_caching_does_not_apply_it_says_so(compose_cfg, train_data, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(compose_cfg([*FAST_TRAIN_OVERRIDES, *overrides], data_root=train_data))


def test_moco_trains_with_gradient_caching(compose_cfg, train_data):
    overrides = ["objective=moco", "objective.queue_size=8", "module.grad_cache.chunk_size=2", "task.export=false"]
    metrics = train(compose_cfg([*FAST_TRAIN_OVERRIDES, *overrides], data_root=train_data))
    assert metrics["train"]["steps"] == 8


def test_ddp_with_gradient_caching_ends_with_the_plain_ddp_weights(train_data, tmp_path):
    from tests.test_train import _cli, _cli_overrides

    weights = {}
    for name, extra in (("plain", []), ("cached", ["module.grad_cache.chunk_size=2"])):
        run_dir = tmp_path / name
        done = _cli([*_cli_overrides(train_data, run_dir), "trainer=ddp", "trainer.max_epochs=1", *NO_DROPOUT, *extra],
                    capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        weights[name] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        if name == "plain":
            start = torch.load(run_dir / "checkpoints" / "start.ckpt", weights_only=True)["state_dict"]
            assert any(not torch.allclose(start[k], v) for k, v in weights[name].items())  # it did train
    assert all(torch.allclose(weights["cached"][k], v, atol=1e-5) for k, v in weights["plain"].items())
