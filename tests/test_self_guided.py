"""SG-OPT: the loss against a hand computation, the frozen copy and frozen embeddings after a step, the
regulariser, the sentence data module (no test text, distinct sentences), and experiment=sgopt_stsb end to end on
tiny STS files (STS dev chooses the checkpoint, step 0 the baseline; STS-B and SICK-R test scored)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from retrieval_lab.data.sts import load_stsb
from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.objectives.self_guided import SelfGuidedContrastive, sg_opt_loss
from retrieval_lab.training.module import RetrievalModule
from retrieval_lab.training.sentences import SentenceDataModule
from tests.conftest import TINY_BERT, TINY_MODEL_OVERRIDES
from tests.test_sts import SENTENCES, write_sts


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    anchors, views, t = torch.randn(3, 4), torch.randn(3, 2, 4), 0.5  # 3 sentences, 2 layer views
    terms = []
    for b in range(3):
        negatives = [cos(anchors[b], views[c, k]) / t for k in range(2) for c in range(3) if c != b]
        for layer in range(2):
            positive = cos(anchors[b], views[b, layer]) / t
            terms.append(-positive + math.log(math.exp(positive) + sum(math.exp(n) for n in negatives)))
    assert float(sg_opt_loss(anchors, views, t)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def _module(reg_lambda: float = 0.1) -> RetrievalModule:
    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT, pooling="cls", normalize=False)
    objective = SelfGuidedContrastive(temperature=0.05, reg_lambda=reg_lambda, projection_dim=16)
    return RetrievalModule(encoder, objective, functools.partial(torch.optim.AdamW, lr=1e-2))


def test_a_step_moves_bert_t_but_not_bert_f_nor_the_embeddings():
    module = _module()
    objective, tower = module.objective, module.encoder.query_tower
    before = {k: v.clone() for k, v in module.state_dict().items()}
    batch = {"queries": dict(module.encoder.tokenize_queries(SENTENCES))}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    loss = module(batch)
    loss.backward()
    optimizer.step()
    after = module.state_dict()
    frozen = [k for k in after if k.startswith("objective.frozen.")]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # BERT_F, in every checkpoint
    embeddings = [k for k in after if k.startswith("encoder.query_tower.embeddings.")]
    assert embeddings and all(torch.equal(after[k], before[k]) for k in embeddings)
    layers = [k for k in after if k.startswith("encoder.query_tower.encoder.layer.")]
    assert any(not torch.equal(after[k], before[k]) for k in layers)
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("objective.projection."))
    expected = sum(((p - dict(objective.frozen.named_parameters())[n]) ** 2).sum().item()
                   for n, p in tower.named_parameters())  # fmt: skip
    assert expected > 0 and float(objective.distance()) == pytest.approx(expected, rel=1e-5)
    assert not objective.frozen.training and module.training  # BERT_F never drops out


def test_the_regulariser_adds_lambda_times_the_distance():
    module = _module(reg_lambda=0.0)
    batch = {"queries": dict(module.encoder.tokenize_queries(SENTENCES))}
    module.eval()  # no dropout: the two losses see the same vectors
    with torch.no_grad():
        module.encoder.query_tower.encoder.layer[0].output.dense.weight.add_(0.1)
        plain = module(batch)
        module.objective.reg_lambda = 0.5
        regularised = module(batch)
    assert float(regularised - plain) == pytest.approx(0.5 * float(module.objective.distance()), rel=1e-4)


@pytest.mark.parametrize(("kwargs", "message"), [({"pooling": "mean", "normalize": False}, "model.pooling=cls"),
                                                  ({"pooling": "cls"}, "model.normalize=false")])  # fmt: skip
def test_bind_refuses_anything_but_the_raw_cls_vector(kwargs, message):
    encoder = BiEncoder(config_overrides=TINY_BERT, **kwargs)
    with pytest.raises(ValueError, match=message):
        SelfGuidedContrastive().bind(encoder)


def test_sentences_are_the_distinct_train_and_dev_sentences_never_test(tmp_path):
    root = write_sts(tmp_path)
    sts = load_stsb(root)
    test_only = {s for p in sts.splits["test"] for s in (p.sentence1, p.sentence2)}
    for p in sts.splits["test"]:  # make the test text distinct from everything else
        object.__setattr__(p, "sentence1", "TEST " + p.sentence1)
    dm = SentenceDataModule(lambda: sts, batch_size=4)
    dm.setup()
    sentences = dm.train_data.sentences
    assert len(sentences) == len(set(sentences)) and not any(s.startswith("TEST") for s in sentences)
    assert set(sentences) <= {s for split in ("train", "dev") for p in sts.splits[split]
                              for s in (p.sentence1, p.sentence2)} and test_only  # fmt: skip
    with pytest.raises(ValueError, match="must not hold test"):
        SentenceDataModule(lambda: sts, train_splits=["train", "test"])


@pytest.mark.parametrize("cache", [[], ["module.grad_cache.chunk_size=2"]])
def test_sgopt_experiment_end_to_end_on_tiny_sts(compose_cfg, tmp_path, cache):
    root = write_sts(tmp_path / "data")
    overrides = [*cache, "experiment=sgopt_stsb", "data=stsb", *TINY_MODEL_OVERRIDES, "objective.projection_dim=16",
                 "datamodule.batch_size=4", "callbacks.dev_eval.every_n_steps=1", "logger=csv", "task.export=false",
                 "trainer.max_epochs=2", "trainer.max_steps=3", "trainer.enable_progress_bar=false"]  # fmt: skip
    metrics = train(compose_cfg(overrides, data_root=root))
    assert set(metrics) >= {"dev", "test", "sickr", "train"} and "spearman" in metrics["sickr"]["test"]
    history = metrics["train"]["dev_history"]
    assert [s for s, _ in history] == [0, 1, 2, 3] and metrics["train"]["dev_metric"] == "spearman"
    assert metrics["train"]["best_dev_value"] == max(v for _, v in history)
    assert metrics["dev"]["spearman"] == pytest.approx(metrics["train"]["best_dev_value"], abs=1e-4)  # the chosen
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == metrics and (out / "sts.test.tsv").exists()
    from scipy.stats import spearmanr  # the other dataset's per-pair predictions give its reported figure

    rows = [line.split("\t") for line in (out / "sts.sickr.test.tsv").read_text().splitlines()]
    gold, predicted = zip(*((float(r[0]), float(r[1])) for r in rows), strict=True)
    assert spearmanr(gold, predicted).statistic == pytest.approx(metrics["sickr"]["test"]["spearman"], abs=1e-4)
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("objective.frozen.") for k in state["state_dict"])  # a resumed run keeps BERT_F
