"""Contriever's pieces: random crops (inside their window, ratios in range, independent), the MoCo queue (FIFO,
never the current batch's keys, masked by document), the momentum update, and MoCo state across a resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.objectives.masking import batch_labels
from retrieval_lab.objectives.moco import EMPTY, MoCo, moco_logits
from retrieval_lab.pretrain.cropping import Cropper, crop
from tests.conftest import FAST_TRAIN_OVERRIDES, TINY_BERT


def is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(t in it for t in small)


def test_a_real_tokenizer_gets_its_special_tokens_around_each_crop():
    encoder = BiEncoder(config_overrides=TINY_BERT)
    item = Cropper(encoder, 16, 0.5, 0.5, 0.0)("ants build large nests underground", "article:a", random.Random(0))
    tok = encoder.tokenizer
    assert item["query_ids"][0] == tok.cls_token_id and item["query_ids"][-1] == tok.sep_token_id


def test_crops_are_spans_of_their_window_at_the_asked_ratio():
    ids = list(range(1000))
    rng = random.Random(0)
    for _ in range(300):
        out = crop(ids, 0.1, 0.5, 0.0, rng)
        assert out == list(range(out[0], out[0] + len(out))) and 100 <= len(out) <= 500
        deleted = crop(ids, 0.1, 0.5, 0.1, rng)  # deletion keeps the order, drops about 10%
        assert is_subsequence(deleted, ids) and deleted[-1] - deleted[0] + 1 <= 500


class CountingTokenizer:
    """Token ids 0..n-1 for a text of n words (each token distinct), with -1/-2 as [CLS]/[SEP]."""

    def __call__(self, text: str, add_special_tokens: bool = True, **kwargs) -> dict:
        ids = list(range(len(text.split())))
        return {"input_ids": [-1, *ids, -2] if add_special_tokens else ids}


def test_cropper_crops_inside_one_window_independently():
    encoder = BiEncoder(config_overrides=TINY_BERT)
    encoder.tokenizer = CountingTokenizer()
    cropper = Cropper(encoder, 64, ratio_min=0.1, ratio_max=0.5, delete_prob=0.0)
    text = " ".join(["word"] * 1000)
    windows, offsets = set(), []
    for seed in range(2000):
        item = cropper(text, "article:x", random.Random(seed))
        first, second = item["query_ids"], item["positive_ids"]
        assert first[0] == second[0] == -1 and first[-1] == second[-1] == -2 and item["relevant"] == ["article:x"]
        first, second = first[1:-1], second[1:-1]
        for part in (first, second):  # contiguous, 6 to 32 tokens of the 64-token window
            assert part == list(range(part[0], part[0] + len(part))) and 6 <= len(part) <= 32
        assert max(first + second) - min(first + second) < 64  # both inside one window
        windows.add(min(first + second) // 64)
        offsets.append((first[0], second[0]))
    a, b = np.array(offsets, dtype=float).T
    assert len(windows) > 10  # a fresh window offset per example, all over the document
    assert abs(np.corrcoef(a - a.min(), b - a.min())[0, 1]) < 0.999  # not the same crop twice
    within = [(x - y) for x, y in offsets]
    assert abs(np.mean(within)) < 2 and np.std(within) > 5  # the two crops start independently in the window


def _bound(queue_size: int = 8, momentum: float = 0.9) -> tuple[BiEncoder, MoCo]:
    torch.manual_seed(0)
    encoder = BiEncoder(config_overrides=TINY_BERT)
    moco = MoCo(queue_size=queue_size, momentum=momentum, temperature=0.1)
    moco.bind(encoder)
    return encoder, moco


def _batch(encoder: BiEncoder, texts: list[str], docs: list[str]) -> tuple[dict, dict]:
    batch = {"queries": dict(encoder.tokenize_queries(texts)), "docs": dict(encoder.tokenize_docs(texts))}
    return batch, batch_labels(docs, [[d] for d in docs])


def test_queue_is_fifo_and_never_holds_the_current_keys_when_scored():
    encoder, moco = _bound(queue_size=8, momentum=0.0)  # momentum 0: the key encoder equals the query encoder
    moco.eval()
    encoder.eval()
    seen = []
    for step in range(3):
        texts = [f"text {step} {i}" for i in range(4)]
        batch, labels = _batch(encoder, texts, [f"d{step}{i}" for i in range(4)])
        q = encoder.encode_queries(batch["queries"])
        before = moco.queue.clone()
        loss = moco(q, None, labels=labels, batch=batch)
        k = encoder.encode_docs(batch["docs"])
        expected = torch.nn.functional.cross_entropy(moco_logits(q, k, before) / 0.1, torch.zeros(4, dtype=torch.long))
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)  # scored against the queue before this batch
        seen.append(k.detach())
        slot = (step * 4) % 8
        assert torch.allclose(moco.queue[slot : slot + 4], k, atol=1e-6) and int(moco.queue_ptr) == (slot + 4) % 8
    assert torch.allclose(moco.queue[4:8], seen[1], atol=1e-6) and torch.allclose(moco.queue[0:4], seen[2], atol=1e-6)
    assert int((moco.queue_keys == EMPTY).sum()) == 0  # every slot has its document's key


def test_momentum_update_follows_its_formula():
    encoder, moco = _bound(momentum=0.9)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.5)
    key_before = [p.clone() for p in moco.key_encoder.parameters()]
    moco.momentum_update()
    for k0, k, q in zip(key_before, moco.key_encoder.parameters(), encoder.parameters(), strict=True):
        assert torch.allclose(k, 0.9 * k0 + 0.1 * q, atol=1e-6)
    assert not any(p.requires_grad for p in moco.key_encoder.parameters())


def test_queued_keys_of_a_relevant_document_leave_the_row_softmax():
    encoder, moco = _bound(queue_size=8)
    batch, labels = _batch(encoder, ["a b", "c d", "e f", "g h"], ["d0", "d1", "d2", "d3"])
    moco.queue_keys[:] = labels["doc_keys"][0]  # every queued key came from row 0's document
    moco(encoder.encode_queries(batch["queries"]), None, labels=labels, batch=batch)
    assert float(moco.masked_share) == pytest.approx(8 / 9 / 4)  # row 0 loses all 8 queue columns of 9


def test_queue_must_be_a_multiple_of_the_global_batch():
    encoder, moco = _bound(queue_size=6)
    batch, labels = _batch(encoder, ["a", "b", "c", "d"], ["d0", "d1", "d2", "d3"])
    with pytest.raises(ValueError, match=r"objective.queue_size \(6\) must be a multiple of the global batch \(4\)"):
        moco(encoder.encode_queries(batch["queries"]), None, labels=labels, batch=batch)


class RaiseAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("interrupted")


def test_moco_state_continues_after_a_resume(compose_cfg, train_data, tmp_path):
    base = [*FAST_TRAIN_OVERRIDES, "objective=moco", "objective.queue_size=8", "task.export=false"]
    train(compose_cfg(base, data_root=train_data))  # 8 steps straight
    straight = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    (tmp_path / "out").rename(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="interrupted"):  # last.ckpt at step 2, stopped at step 3
        train(compose_cfg([*base, "+callbacks.stop._target_=tests.test_contriever.RaiseAtStep",
                           "+callbacks.stop.step=3"], data_root=train_data))  # fmt: skip
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    at_two = torch.load(last, weights_only=True)
    assert at_two["global_step"] == 2 and int(at_two["state_dict"]["objective.queue_ptr"]) == 0  # 2 x 4 keys in 8
    train(compose_cfg([*base, f"ckpt_path={last}"], data_root=train_data))
    resumed = torch.load(last, weights_only=True)["state_dict"]
    for key in ("objective.queue", "objective.queue_keys", "objective.queue_ptr"):
        assert torch.allclose(resumed[key].float(), straight[key].float(), atol=1e-4), key
    keys = [k for k in straight if k.startswith("objective.key_encoder.")]
    assert keys and all(torch.allclose(resumed[k], straight[k], atol=1e-4) for k in keys)
