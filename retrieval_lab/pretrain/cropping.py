"""Contriever's random cropping on token ids: a window of ``chunk_length`` tokens at a random offset of the
document, two independent crops of it, token deletion, then the tokenizer's special tokens around each crop.

Every draw comes from the example's own ``random.Random`` (the stream's ``(epoch, batch, slot)`` key), so a fresh
window offset is drawn for each example in each epoch and the stream reproduces whatever the number of workers.
(Contriever cuts the concatenated corpus into fixed chunks with one fresh offset per epoch; a window per example
at a random offset is the same distribution over windows for documents longer than a chunk.)
"""

from __future__ import annotations

import random

from retrieval_lab.models.base import Encoder


def crop(ids: list[int], ratio_min: float, ratio_max: float, delete_prob: float, rng: random.Random) -> list[int]:
    """A contiguous span of ``U(ratio_min, ratio_max)`` of ``ids`` (at least one token), each token then deleted
    with ``delete_prob`` (at least one kept).

    >>> out = crop(list(range(100)), 0.2, 0.2, 0.0, random.Random(0))
    >>> len(out), out == list(range(out[0], out[0] + 20))
    (20, True)
    """
    length = max(1, int(rng.uniform(ratio_min, ratio_max) * len(ids)))
    start = rng.randrange(len(ids) - length + 1)
    span = ids[start : start + length]
    kept = [t for t in span if rng.random() >= delete_prob]
    return kept or [span[rng.randrange(len(span))]]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one sequence ([CLS] / [SEP] for BERT), read off a probe."""
    bare = tokenizer("retrieval", add_special_tokens=False)["input_ids"]
    full = tokenizer("retrieval", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError("pretrain_task=cropping: cannot place the tokenizer's special tokens around a crop")


class Cropper:
    """Tokenizes a document (no special tokens) and makes the two crops of one example as token ids."""

    def __init__(self, encoder: Encoder, chunk_length: int, ratio_min: float, ratio_max: float,
                 delete_prob: float) -> None:  # fmt: skip
        tokenizer = getattr(encoder, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"pretrain_task=cropping needs an encoder with a tokenizer, not {type(encoder).__name__}")
        self.tokenizer, self.chunk_length = tokenizer, chunk_length
        self.ratio_min, self.ratio_max, self.delete_prob = ratio_min, ratio_max, delete_prob
        self.prefix, self.suffix = special_tokens(tokenizer)

    def window(self, ids: list[int], rng: random.Random) -> list[int]:
        if len(ids) <= self.chunk_length:
            return ids
        offset = rng.randrange(len(ids) - self.chunk_length + 1)
        return ids[offset : offset + self.chunk_length]

    def __call__(self, text: str, group: str, rng: random.Random) -> dict:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if not ids:
            raise ValueError(f"pretrain_task=cropping: {group} has no tokens")
        chunk = self.window(ids, rng)
        first, second = (crop(chunk, self.ratio_min, self.ratio_max, self.delete_prob, rng) for _ in range(2))
        first, second = (self.prefix + c + self.suffix for c in (first, second))
        return {"query_ids": first, "positive_ids": second, "doc_ids": [group], "relevant": [group]}
