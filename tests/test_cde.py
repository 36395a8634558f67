"""model=cde: the context enters without positions (permuting it changes nothing), matters, trains stage 1 through
stage 2, is a seeded corpus sample at evaluation; no context is the plain bi-encoder over stage 2; a training run
with cluster batches completes; each arm of experiment=cde_scifact changes only its factor and trains."""

from __future__ import annotations

import functools

import pytest
import torch

from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.cde import ContextualEncoder
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.training.module import RetrievalModule
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_BERT
from tests.helpers import assert_scored_from_its_run

TEXTS = ["aspirin lowers heart attack risk", "vitamin c does not prevent colds", "smoking causes lung cancer",
         "short sleep and obesity", "coffee and liver disease"]  # fmt: skip


def _cde(**kwargs) -> ContextualEncoder:
    torch.manual_seed(0)
    return ContextualEncoder(config_overrides=TINY_BERT, context_size=3, **kwargs).eval()


def test_no_context_is_the_plain_bi_encoder_over_stage_2():
    cde = _cde()
    plain = BiEncoder(config_overrides=TINY_BERT).eval()
    plain.query_tower.load_state_dict(cde.backbone.state_dict())
    batch = cde.tokenize_docs(TEXTS)
    assert torch.allclose(cde.encode_docs(batch), plain.encode_docs(plain.tokenize_docs(TEXTS)), atol=1e-6)


def test_the_context_matters_and_carries_no_position():
    cde = _cde()
    batch = cde.tokenize_docs(TEXTS)
    alone = cde.encode_docs(batch)
    cde.use_corpus(TEXTS)
    with_context = cde.encode_docs(batch)
    assert not torch.allclose(alone, with_context, atol=1e-4)
    cde.context = cde.context.flip(0)  # the same context vectors in another order
    assert torch.allclose(cde.encode_docs(batch), with_context, atol=1e-5)


def test_corpus_context_is_a_seeded_sample_computed_once():
    cde = _cde()
    cde.use_corpus(TEXTS)
    first = cde.context.clone()
    cde.encode_queries(cde.tokenize_queries(["a query"]))
    cde.use_corpus(TEXTS)
    assert torch.equal(cde.context, first) and cde.context.shape[0] == 3
    other = _cde(context_seed=5)
    other.use_corpus(TEXTS)
    assert not torch.allclose(other.context, first)


def test_full_sequence_dropout_replaces_every_context_vector_by_the_null_vector():
    cde = _cde(sequence_dropout=1.0).train()
    for layer in cde.modules():  # no other randomness than the sequence dropout
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    batch = cde.tokenize_docs(TEXTS)
    cde.use_corpus(TEXTS)
    one = cde.encode_docs(batch)
    cde.context = torch.randn_like(cde.context)
    assert torch.allclose(cde.encode_docs(batch), one, atol=1e-6)  # the context's content no longer matters


def test_training_sends_gradients_into_stage_1_through_the_batch_context():
    cde = _cde().train()
    module = RetrievalModule(cde, InfoNCE(mask_false_negatives=False), functools.partial(torch.optim.AdamW))
    batch = {"queries": dict(cde.tokenize_queries(TEXTS[:3])), "docs": dict(cde.tokenize_docs(TEXTS[2:]))}
    module(batch).backward()
    assert cde.context.shape[0] == 3
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cde.first.parameters())
    assert cde.context_projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("extra", [["datamodule.batching=random"], ["datamodule.batching=cluster"],
                                   ["datamodule.batching=cluster", "module.grad_cache.chunk_size=2"]])  # fmt: skip
def test_a_cde_training_run_completes(compose_cfg, train_data, tmp_path, extra):
    overrides = [*FAST_TRAIN_OVERRIDES, "model=cde", "model.context_size=4", *extra]
    metrics = train(compose_cfg(overrides, data_root=train_data))
    assert metrics["train"]["steps"] == 8
    assert_scored_from_its_run(tmp_path / "out", metrics)


def test_two_stage_gradient_caching_equals_the_plain_step():
    from retrieval_lab.training.grad_cache import grad_cache_loss

    no_dropout = dict(TINY_BERT) | {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    torch.manual_seed(0)
    cde = ContextualEncoder(config_overrides=no_dropout, context_size=4).train()
    objective = InfoNCE(mask_false_negatives=False)
    batch = {"queries": dict(cde.tokenize_queries(TEXTS)), "docs": dict(cde.tokenize_docs(TEXTS[::-1]))}
    cde.use_batch_context(batch["docs"])
    plain = objective(cde.encode_queries(batch["queries"]), cde.encode_docs(batch["docs"]), cde.score)
    plain.backward()
    expected = {n: p.grad.clone() for n, p in cde.named_parameters() if p.grad is not None}
    cde.zero_grad()
    cached = grad_cache_loss(cde, objective, batch, chunk_size=2)
    got = {n: p.grad for n, p in cde.named_parameters() if p.grad is not None}
    assert float(cached) == pytest.approx(float(plain), abs=1e-6) and set(got) == set(expected)
    assert any(n.startswith("first.") for n in got)  # stage 1 received its gradient through the cached context
    assert max(float((got[n] - g).abs().max()) for n, g in expected.items()) < 1e-5


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


CDE_ARM_CHANGES = {  # what each arm of experiment=cde_scifact changes against its default arm (top-level keys)
    "default": set(),
    "cluster": {"datamodule.batching"},
    "filter": {"objective.surrogate"},
    "cde": {"model", "datamodule.batching"},
}


@pytest.mark.parametrize("arm", list(CDE_ARM_CHANGES))
def test_each_cde_scifact_arm_changes_only_its_factor_and_trains(compose_cfg, train_data, tmp_path, arm):
    from omegaconf import OmegaConf

    def composed(name):
        extra = ["model.context_size=4"] if name == "cde" else []
        overrides = ["experiment=cde_scifact", f"+experiment/cde_arm={name}", "data=beir", "data.name=tiny",
                     *FAST_TRAIN_OVERRIDES, *extra]  # fmt: skip
        return compose_cfg(overrides, data_root=train_data)

    cfg, base = composed(arm), composed("default")
    flat, flat_base = _flat(OmegaConf.to_container(cfg)), _flat(OmegaConf.to_container(base))
    changed = {k for k in flat.keys() | flat_base.keys() if flat.get(k) != flat_base.get(k)}
    roots = {next((r for r in CDE_ARM_CHANGES[arm] if k == r or k.startswith(r + ".")), k) for k in changed}
    assert roots == CDE_ARM_CHANGES[arm]
    metrics = train(cfg)
    assert metrics["train"]["steps"] == 8
    assert_scored_from_its_run(tmp_path / "out", metrics)


def test_the_cde_scifact_sweep_is_four_arms_by_three_seeds():
    from omegaconf import OmegaConf

    from tests.test_configs import CONF

    sweep = OmegaConf.load(CONF / "experiment" / "cde_scifact.yaml").hydra
    assert sweep.mode == "MULTIRUN"
    assert sweep.sweeper.params["+experiment/cde_arm"].split(",") == list(CDE_ARM_CHANGES)
    assert sweep.sweeper.params.seed.split(",") == ["42", "1", "2"]
    assert all((CONF / "experiment" / "cde_arm" / f"{arm}.yaml").is_file() for arm in CDE_ARM_CHANGES)
