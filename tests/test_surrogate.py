"""CDE's surrogate false-negative filter on a hand-built batch: an in-batch document the surrogate scores at least
threshold x the positive leaves the row's softmax; the row's own positive never does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.objectives.pairwise import PairwiseSoftmax, pairwise_softmax_loss
from retrieval_lab.objectives.surrogate import SurrogateFilter
from retrieval_lab.objectives.tct import TCTDistill, tct_kd_loss
from tests.conftest import TINY_BERT

QUERIES = ["aspirin heart attacks", "vitamin c colds", "smoking aspirin cancer"]
# row 2's positive is a copy of row 0's under another id: unlabelled, so only the surrogate can catch it
DOCS = ["aspirin lowers heart attack risk", "vitamin c does not prevent colds", "aspirin lowers heart attack risk"]
VOCAB = sorted({w for t in QUERIES + DOCS for w in t.split()})


class BagOfWords(nn.Module):
    """A surrogate with scores one can compute by hand: cosine of word-count vectors."""

    multi_vector = False

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter, for the device

    def _bow(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"bow": torch.tensor([[t.split().count(w) for w in VOCAB] for t in texts], dtype=torch.float)}

    tokenize_queries = tokenize_docs = _bow

    def encode_queries(self, batch: dict) -> torch.Tensor:
        return F.normalize(batch["bow"], dim=-1)

    encode_docs = encode_queries

    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return q @ d.T


def _setup():
    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT).eval()
    batch = {"queries": dict(encoder.tokenize_queries(QUERIES)), "docs": dict(encoder.tokenize_docs(DOCS))}
    return encoder, batch


def test_surrogate_masks_what_scores_like_the_positive_and_never_the_positive():
    encoder, batch = _setup()
    mask = SurrogateFilter(BagOfWords(), threshold=1.0).mask(batch, torch.arange(3), encoder.tokenizer)
    assert mask.nonzero().tolist() == [[0, 2], [2, 0]]  # the copy, in both rows that rank it as their positive
    strict = SurrogateFilter(BagOfWords(), threshold=1.01).mask(batch, torch.arange(3), encoder.tokenizer)
    assert not strict.any()  # the copy scores exactly 1.0 x the positive


def test_infonce_with_a_surrogate_drops_the_masked_columns_from_the_loss():
    encoder, batch = _setup()
    q, d = encoder.encode_queries(batch["queries"]), encoder.encode_docs(batch["docs"])
    filtered = InfoNCE(temperature=0.1, mask_false_negatives=False, surrogate=SurrogateFilter(BagOfWords()))
    filtered.bind(encoder)
    loss = filtered(q, d, encoder.score, batch=batch)
    scores = encoder.score(q, d) / 0.1
    scores[0, 2] = scores[2, 0] = float("-inf")
    assert torch.allclose(loss, F.cross_entropy(scores, torch.arange(3)), atol=1e-6)
    plain = InfoNCE(temperature=0.1, mask_false_negatives=False)(q, d, encoder.score)
    assert (
        not torch.allclose(loss, plain)
        and float(filtered.masked_share) == pytest.approx(2 / 9)
        and filtered.needs_batch
    )


def test_pairwise_with_a_surrogate_drops_a_hard_negative_that_copies_the_positive():
    # B = 3 positives, then one hard negative per query: query 0's is a copy of its positive under another id
    encoder, _ = _setup()
    docs = [*DOCS, "aspirin lowers heart attack risk", "smoking", "vitamin c does not prevent colds"]
    batch = {"queries": dict(encoder.tokenize_queries(QUERIES)), "docs": dict(encoder.tokenize_docs(docs))}
    q, d = encoder.encode_queries(batch["queries"]), encoder.encode_docs(batch["docs"])
    filtered = PairwiseSoftmax(temperature=0.1, mask_false_negatives=False, surrogate=SurrogateFilter(BagOfWords()))
    filtered.bind(encoder)
    loss = filtered(q, d, encoder.score, batch=batch)
    all_scores = encoder.score(q, d)  # (3, 6)
    by_hand = torch.stack([all_scores[i, [i, 3 + i]] for i in range(3)])  # (3, 2): own positive, own negative
    by_hand[0, 1] = float("-inf")  # only the copy: rows 1 and 2 keep their negatives, no other column is scored
    assert torch.allclose(loss, pairwise_softmax_loss(by_hand, 0.1), atol=1e-6)
    plain = PairwiseSoftmax(temperature=0.1, mask_false_negatives=False)(q, d, encoder.score)
    assert not torch.allclose(loss, plain) and float(filtered.masked_share) == pytest.approx(1 / 6)


def test_tct_with_a_surrogate_drops_the_copy_from_both_softmaxes():
    encoder, batch = _setup()
    torch.manual_seed(1)
    teacher = ColBERT(config_overrides=TINY_BERT, dim=16).eval()
    q, d = encoder.encode_queries(batch["queries"]), encoder.encode_docs(batch["docs"])
    distill = TCTDistill(teacher, temperature=0.5, mask_false_negatives=False, surrogate=SurrogateFilter(BagOfWords()))
    distill.bind(encoder)
    loss = distill(q, d, encoder.score, batch=batch)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 2] = mask[2, 0] = True
    expected = tct_kd_loss(encoder.score(q, d), distill.teacher_scores(batch), 0.5, mask=mask)
    assert torch.allclose(loss, expected, atol=1e-6)
    plain = TCTDistill(teacher, temperature=0.5, mask_false_negatives=False)(q, d, encoder.score, batch=batch)
    assert not torch.allclose(loss, plain) and float(distill.masked_share) == pytest.approx(2 / 9)


def test_a_training_run_filters_with_a_configured_surrogate(compose_cfg, train_data):
    from retrieval_lab.main import train
    from tests.conftest import FAST_TRAIN_OVERRIDES

    tiny = ", ".join(f"{k}: {v}" for k, v in TINY_BERT.items())
    model = "{_target_: retrieval_lab.models.biencoder.BiEncoder, config_overrides: {" + tiny + "}}"
    surrogate = f"objective.surrogate={{_target_: retrieval_lab.objectives.surrogate.SurrogateFilter, model: {model}}}"
    metrics = train(compose_cfg([*FAST_TRAIN_OVERRIDES, surrogate, "task.export=false"], data_root=train_data))
    assert metrics["train"]["steps"] == 8
