"""False-negative masking: hand-built batches where queries share positives and mined negatives are relevant."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval_lab.data.beir import Document
from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.negatives.base import NegativeSampler
from retrieval_lab.negatives.random import RandomNegatives
from retrieval_lab.objectives.infonce import InfoNCE
from retrieval_lab.objectives.masking import batch_labels, false_negative_mask
from retrieval_lab.objectives.pairwise import PairwiseSoftmax
from retrieval_lab.objectives.tct import tct_kd_loss
from retrieval_lab.pretrain.tasks import Pair
from retrieval_lab.training.data import TrainingCollator, TrainingExample, TrainingExamples
from tests.conftest import TINY_BERT

# Three queries, one negative each. q0 and q1 share the positive A; q0's mined negative C is q2's positive.
# Document layout (the objectives'): the positives A, A, C, then the negatives C (q0's), X (q1's), Y (q2's).
DOC_IDS = ["A", "A", "C", "C", "X", "Y"]
RELEVANT = [["A"], ["A"], ["C"]]
SCORES = torch.tensor(
    [
        [2.0, 1.5, 0.3, 0.9, 0.1, -0.4],
        [1.1, 1.8, 0.2, 0.6, 0.7, 0.0],
        [0.5, 0.4, 1.2, 1.0, -0.2, 0.3],
    ]
)


def fixed_scores(q, d):
    return SCORES


def by_hand(rows: list[tuple[int, list[int]]]) -> float:
    """Mean over rows of -s[target] + log sum over the kept columns of exp(s) (temperature 1)."""
    losses = []
    for i, (target, kept) in enumerate(rows):
        losses.append(-SCORES[i, target].item() + math.log(sum(math.exp(SCORES[i, j].item()) for j in kept)))
    return sum(losses) / len(losses)


def test_masked_infonce_equals_the_loss_computed_by_hand():
    labels = batch_labels(DOC_IDS, RELEVANT)
    q, d = torch.zeros(3, 4), torch.zeros(6, 4)
    masked = InfoNCE(temperature=1.0)
    loss = masked(q, d, fixed_scores, labels=labels)
    # row 0 drops column 1 (A again: its own positive); row 1 drops column 0 (A, its positive too);
    # row 2 drops column 3 (C, q0's mined negative, is q2's positive)
    expected = by_hand([(0, [0, 2, 3, 4, 5]), (1, [1, 2, 3, 4, 5]), (2, [0, 1, 2, 4, 5])])
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert masked.masked_share.item() == pytest.approx(3 / 18)
    unmasked = InfoNCE(temperature=1.0, mask_false_negatives=False)(q, d, fixed_scores, labels=labels)
    assert unmasked.item() == pytest.approx(by_hand([(i, list(range(6))) for i in range(3)]), abs=1e-6)
    assert unmasked.item() > loss.item() + 0.1


def test_masking_needs_labels_and_says_how_to_turn_it_off():
    with pytest.raises(ValueError, match="mask_false_negatives=false"):
        InfoNCE()(torch.zeros(3, 4), torch.zeros(6, 4), fixed_scores)


def test_pairwise_masks_a_negative_relevant_to_its_own_query():
    # q0's positives to draw from are {A}; R is judged relevant too (below min_relevance) and was drawn as
    # its negative: it leaves q0's softmax. q1's negatives are fine.
    labels = batch_labels(["A", "B", "R", "X", "Y", "Z"], [["A", "R"], ["B"]])
    scores = torch.tensor([[1.0, 0.8, -0.5], [0.3, 0.9, 0.1]])  # (B, 1 + n): positive, then its 2 negatives
    calls = iter(scores[:, None, :].unbind(0))
    loss = PairwiseSoftmax()(torch.zeros(2, 4), torch.zeros(6, 4), lambda q, d: next(calls), labels=labels)
    row0 = -1.0 + math.log(math.exp(1.0) + math.exp(-0.5))
    row1 = -0.3 + math.log(math.exp(0.3) + math.exp(0.9) + math.exp(0.1))
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_masked_distillation_is_the_kl_over_the_kept_columns():
    student = torch.tensor([[1.0, 0.2, -0.3], [0.1, 0.9, 0.4]])
    teacher = torch.tensor([[2.0, 1.5, 0.0], [0.3, 1.0, -1.0]])
    mask = torch.tensor([[False, True, False], [False, False, False]])
    kept = [0, 2]
    row0 = tct_kd_loss(student[:1, kept], teacher[:1, kept], 0.5)
    row1 = tct_kd_loss(student[1:], teacher[1:], 0.5)
    assert tct_kd_loss(student, teacher, 0.5, mask=mask).item() == pytest.approx((row0 + row1).item() / 2, abs=1e-6)
    assert tct_kd_loss(student, teacher, 0.5).item() != pytest.approx((row0 + row1).item() / 2, abs=1e-3)
    student.requires_grad_()
    tct_kd_loss(student, teacher, 0.5, mask=mask).backward()  # -inf on both sides must not give NaN gradients
    assert torch.isfinite(student.grad).all() and student.grad[0, 1] == 0


class FixedNegatives(NegativeSampler):
    num_negatives = 1

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def sample(self, qid, positives, rng):
        return [self.table[qid]]


def test_training_batches_carry_labels_that_mask_shared_positives():
    corpus = {d: Document(d, f"text {d}") for d in "ACXYR"}
    examples = [TrainingExample("q0", ("A",)), TrainingExample("q1", ("A",), ("A", "R")),
                TrainingExample("q2", ("C",))]  # fmt: skip
    data = TrainingExamples(examples, {"q0": "zero", "q1": "one", "q2": "two"}, corpus,
                            FixedNegatives({"q0": "C", "q1": "R", "q2": "Y"}), seed=0)  # fmt: skip
    collate = TrainingCollator(BiEncoder(config_overrides=TINY_BERT))
    labels = collate([data[(0, i)] for i in range(3)])["labels"]
    mask = false_negative_mask(labels["doc_keys"], labels["positive_keys"], torch.arange(3))
    assert mask.int().tolist() == [
        [0, 1, 0, 0, 0, 0],  # q0: the other A
        [1, 0, 0, 0, 1, 0],  # q1: the other A, and R (relevant to q1, drawn as its own negative)
        [0, 0, 0, 1, 0, 0],  # q2: C drawn as q0's negative
    ]


@pytest.mark.parametrize(
    ("source", "group"),
    [
        ({"task": "ict", "article": "Kenya", "passage": 2}, "article:Kenya"),
        ({"task": "bfs", "article": "Kenya", "query_passage": 0, "passage": 3}, "article:Kenya"),
        ({"task": "wlp", "target": "Kenya", "source": "Nairobi", "passage": 1}, "target:Kenya"),
    ],
)
def test_pretraining_pairs_are_grouped_by_article_or_link_target(source, group):
    assert Pair("q", Document("", "d"), source).group == group


@pytest.mark.parametrize("ignore", [True, False])
def test_a_document_with_the_query_id_is_never_its_negative_unless_asked(ignore):
    # "q0" is also a document id (ArguAna, Quora): BEIR's rule keeps it out of q0's negatives
    corpus = {d: Document(d, f"text {d}") for d in ["A", "q0", "X"]}
    sampler = RandomNegatives(num_negatives=1)
    sampler.prepare(corpus, {"q0": "zero"}, {"q0": {"A"}})
    data = TrainingExamples([TrainingExample("q0", ("A",), ignore_identical_id=ignore)], {"q0": "zero"}, corpus,
                            sampler, seed=0)  # fmt: skip
    drawn = {data[(epoch, 0)]["doc_ids"][1] for epoch in range(40)}
    assert drawn == ({"X"} if ignore else {"X", "q0"})


@pytest.mark.parametrize("ignore", [True, False])
def test_evaluation_drops_the_document_with_the_query_id(compose_cfg, tmp_path, ignore):
    from tests.conftest import TINY_CORPUS, TINY_QRELS, TINY_QUERIES, write_beir

    corpus = {**TINY_CORPUS, "q1": ("", TINY_QUERIES["q1"])}  # the query's own text, under its id: BM25's top 1
    root = write_beir(tmp_path / "identical", corpus=corpus, queries=TINY_QUERIES, qrels=TINY_QRELS)
    cfg = compose_cfg(["task=evaluate", "retriever=bm25", f"task.ignore_identical_ids={ignore}",
                       "retriever.show_progress=false"], data_root=root)  # fmt: skip
    metrics = train(cfg)["test"]
    run = (tmp_path / "out" / "run.test.trec").read_text().splitlines()
    assert any(line.split()[:3:2] == ["q1", "q1"] for line in run) is not ignore
    assert (metrics["mrr@10"] == 1.0) is ignore  # q1's relevant d1 is first once its own id is dropped


def test_a_copy_of_the_row_s_positive_is_masked_even_if_its_labels_omit_it():
    # min_relevance 0 can draw a positive judged 0, which is not among the query's relevant documents
    labels = batch_labels(["P", "B", "P", "X"], [["R"], ["B"]])  # row 0's positive P, its copy in column 2
    mask = false_negative_mask(labels["doc_keys"], labels["positive_keys"], torch.tensor([0, 1]))
    assert mask.int().tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
