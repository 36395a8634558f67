"""TCT-ColBERT (Lin, Yang & Lin, 2020/2021): a single-vector student distilled from a frozen ColBERT teacher
over every in-batch query-document pair ("tightly coupled": the teacher scores the student's batch on the fly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.objectives.masking import MaskedShare
from retrieval_lab.objectives.surrogate import SurrogateFilter, require_surrogate_inputs


def tct_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    teacher_temperature: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) between each query's softmax over its row of ``(B, N)`` scores, the student's
    divided by ``temperature`` and the teacher's by ``teacher_temperature`` (None: the same), averaged over the
    queries. Zero exactly when the two scaled score matrices are equal. ``mask`` ``(B, N)`` removes scores from
    both softmaxes (false negatives).

    >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> tct_kd_loss(s, s.clone(), 0.25).item()
    0.0
    >>> round(tct_kd_loss(s, s.flip(1), 1.0).item(), 4)
    0.4621
    """
    if mask is not None:
        student, teacher = student.masked_fill(mask, float("-inf")), teacher.masked_fill(mask, float("-inf"))
    log_student = F.log_softmax(student / temperature, dim=-1)  # (B, N)
    log_teacher = F.log_softmax(teacher / (teacher_temperature or temperature), dim=-1)  # (B, N)
    if mask is None:
        return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")  # ()
    terms = log_teacher.exp() * (log_teacher - log_student)  # (B, N); NaN where both are -inf
    return terms.masked_fill(mask, 0.0).sum() / student.shape[0]  # ()


class TCTDistill(MaskedShare, nn.Module):
    """``forward(q, d, score_fn, batch, labels)``: the student's ``(B, B * (1 + n))`` in-batch scores (hard negatives
    included where the batch has them: TCT HN) against the teacher's MaxSim scores of the same pairs.

    The teacher re-tokenizes the student's batch for itself (decoding the student's ids with its own tokenizer),
    so both must share a vocabulary, as the packaged MiniLM and a ColBERT built from it do. It is frozen and
    kept in eval mode (no dropout). ``teacher_temperature`` (None: ``temperature``) scales the teacher's scores
    on their own, for a student whose scores live on another scale (cosines against MaxSim sums). ``ce_weight``
    mixes in the supervised InfoNCE term on the student's scores: ``(1 - w) * KL + w * CE``. Each rank distils
    over its own batch (nothing is gathered across ranks). With ``mask_false_negatives`` a document relevant to
    a row's query (other than its positive) leaves both softmaxes and the CE term; so does a document a
    ``surrogate`` (CDE's filter) scores at least ``threshold`` x the row's positive.
    """

    needs_batch = True  # RetrievalModule passes the tokenized batch

    def __init__(
        self,
        teacher: Encoder,
        temperature: float = 0.25,
        ce_weight: float = 0.0,
        teacher_temperature: float | None = None,
        mask_false_negatives: bool = True,
        surrogate: SurrogateFilter | None = None,
    ) -> None:
        super().__init__()
        self.mask_false_negatives, self.surrogate, self._tokenizer = mask_false_negatives, surrogate, None
        for key, value in (("temperature", temperature), ("teacher_temperature", teacher_temperature)):
            if value is not None and not value > 0:
                raise ValueError(f"objective.{key} must be > 0, got {value}")
        if not 0 <= ce_weight <= 1:
            raise ValueError(f"objective.ce_weight must be in [0, 1], got {ce_weight}")
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature, self.ce_weight = float(temperature), float(ce_weight)
        self.teacher_temperature = None if teacher_temperature is None else float(teacher_temperature)

    def bind(self, encoder) -> None:
        self._tokenizer = getattr(encoder, "tokenizer", None)  # the student's, to decode the batch for the surrogate

    def train(self, mode: bool = True) -> TCTDistill:
        super().train(mode)
        self.teacher.eval()  # Lightning puts the whole module in train mode; the teacher stays deterministic
        return self

    @torch.no_grad()
    def teacher_scores(self, batch: dict[str, Batch]) -> torch.Tensor:
        """The teacher's ``(B, N)`` scores of every query in ``batch`` against every document in it."""
        tokenizer = self.teacher.tokenizer
        device = next(self.teacher.parameters()).device
        sides = []
        for side, tokenize in (("queries", self.teacher.tokenize_queries), ("docs", self.teacher.tokenize_docs)):
            ids = batch[side]["input_ids"]
            if int(ids.max()) >= len(tokenizer):
                raise ValueError("objective.teacher's vocabulary is smaller than the student's: they must share one")
            texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
            sides.append({k: v.to(device) for k, v in tokenize(texts).items()})
        q = self.teacher.encode_queries(sides[0])  # (B, Lq, dim)
        d = self.teacher.encode_docs(sides[1])  # (N, Ld, dim)
        return self.teacher.score(q, d)  # (B, N)

    def forward(
        self, q: torch.Tensor, d: torch.Tensor, score_fn, batch: dict[str, Batch] | None = None, labels=None
    ) -> torch.Tensor:
        if batch is None:
            raise ValueError(
                "objective=tct_distill needs the tokenized batch for its teacher: RetrievalModule passes it"
            )
        student = score_fn(q, d)  # (B, N)
        teacher = self.teacher_scores(batch).to(student.dtype)  # (B, N)
        if teacher.shape != student.shape:
            raise ValueError(f"teacher scores {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}")
        targets = torch.arange(q.shape[0], device=q.device)  # (B,) positives come first
        mask = self.false_negatives(labels, targets, "tct_distill") if self.mask_false_negatives else None  # (B, N)
        if self.surrogate is not None:
            require_surrogate_inputs(batch, self._tokenizer, "tct_distill")
            filtered = self.surrogate.mask(batch, targets, self._tokenizer, gather=False).to(student.device)  # (B, N)
            mask = filtered if mask is None else mask | filtered
            self.masked_share = mask.float().mean().detach()
        loss = tct_kd_loss(student, teacher, self.temperature, self.teacher_temperature, mask)  # ()
        if self.ce_weight:
            logits = student if mask is None else student.masked_fill(mask, float("-inf"))  # (B, N)
            loss = (1 - self.ce_weight) * loss + self.ce_weight * F.cross_entropy(logits / self.temperature, targets)
        return loss
