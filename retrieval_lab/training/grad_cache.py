"""Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive loss couples every row of a batch, so its gradient needs the whole batch's representations, but not
the whole batch's activations at once. One step:

1. encode the queries and documents in chunks of ``chunk_size`` rows without gradient, remembering each chunk's
   random state (dropout);
2. compute the loss over the whole batch's representations (leaf tensors) and back-propagate it: this gives the
   gradient of the loss with respect to every representation (and to the objective's own parameters);
3. re-encode each chunk with gradient under its remembered random state and back-propagate its cached
   representation gradient into the encoder.

The accumulated gradient equals that of the plain full-batch step (up to floating-point order); peak activation
memory is that of one chunk. For CDE (``model=cde``) the context is cached the same way, a first stage: its
stage-1 vectors are a leaf that every stage-2 chunk reads, whose gradient, once all chunks are through, is pushed
back into stage 1 chunk by chunk. Single-vector encoders only (token vectors of different lengths per chunk would have
to be padded to one length first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from retrieval_lab.models.base import Batch


def split_batch(batch: Batch, chunk_size: int) -> list[Batch]:
    """Row chunks of a tokenized batch (every tensor cut along its first dimension).

    >>> [c["input_ids"].tolist() for c in split_batch({"input_ids": torch.arange(5)[:, None]}, 2)]
    [[[0], [1]], [[2], [3]], [[4]]]
    """
    rows = next(iter(batch.values())).shape[0]
    return [{k: v[i : i + chunk_size] for k, v in batch.items()} for i in range(0, rows, chunk_size)]


@contextlib.contextmanager
def replay_rng(state: dict):
    """Run the block under a remembered CPU (and CUDA) random state, restoring the current one afterwards."""
    devices = list(range(torch.cuda.device_count())) if "cuda" in state else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state["cpu"])
        if devices:
            torch.cuda.set_rng_state_all(state["cuda"])
        yield


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class CachedSide:
    """One side of the batch (queries or documents): its chunks, their random states and representations."""

    def __init__(self, encode: Callable[[Batch], torch.Tensor], batch: Batch, chunk_size: int) -> None:
        self.encode, self.chunks, self.states = encode, split_batch(batch, chunk_size), []
        parts = []
        with torch.no_grad():
            for chunk in self.chunks:
                self.states.append(rng_state())
                parts.append(encode(chunk))  # (c, d)
        self.reps = torch.cat(parts).detach().requires_grad_(True)  # (N, d), a leaf: the loss's gradient lands here

    def backward(self, backward: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        """Re-encode each chunk with gradient under its random state and push the cached gradient through it."""
        if self.reps.grad is None:
            return  # the loss did not use this side
        start = 0
        for chunk, state in zip(self.chunks, self.states, strict=True):
            with replay_rng(state):
                reps = self.encode(chunk)  # (c, d), with the activations of this chunk only
            backward(reps, self.reps.grad[start : start + reps.shape[0]])
            start += reps.shape[0]


def objective_loss(objective, q: torch.Tensor, d: torch.Tensor | None, score, batch: dict) -> torch.Tensor:
    """Call an objective the one way the lab does: vectors, the score function, the batch's labels (false-negative
    masking), and the tokenized batch for objectives with ``needs_batch`` (a teacher, a frozen copy, a queue's key
    encoder, a surrogate)."""
    extra = {"batch": batch} if getattr(objective, "needs_batch", False) else {}
    return objective(q, d, score, labels=batch.get("labels"), **extra)  # ()


def grad_cache_loss(encoder, objective, batch: dict, chunk_size: int,
                    backward: Callable[..., None] | None = None) -> torch.Tensor:  # fmt: skip
    """The loss of ``batch`` with its gradients accumulated into the encoder's and objective's ``.grad`` by the
    three steps above. ``backward(tensor, gradient=None)`` back-propagates (Lightning's ``manual_backward``;
    ``torch.autograd.backward`` by default). Returns the loss, detached."""
    backward = backward or (lambda t, g=None: torch.autograd.backward(t, g))
    if getattr(encoder, "multi_vector", False):
        raise ValueError("module.grad_cache works with single-vector encoders; model=colbert is not supported")
    context = None
    if hasattr(encoder, "use_batch_context"):  # CDE: stage 1's context, cached as a leaf like the representations
        context = CachedSide(encoder.first.encode_docs, encoder.context_tokens(batch["docs"]), chunk_size)
        encoder.context = context.reps  # stage 2 reads it; its gradient collects on the leaf
    queries = CachedSide(encoder.encode_queries, batch["queries"], chunk_size)
    docs = CachedSide(encoder.encode_docs, batch["docs"], chunk_size) if getattr(
        objective, "uses_docs", True) else None  # fmt: skip
    loss = objective_loss(objective, queries.reps, None if docs is None else docs.reps, encoder.score, batch)
    if not torch.isfinite(loss):
        return loss.detach()  # the caller stops the run before anything is stepped
    backward(loss)
    for side in (queries, docs):
        if side is not None:
            side.backward(backward)
    if context is not None:  # stage 2's chunks have filled the context's gradient: now stage 1, chunk by chunk
        context.backward(backward)
    return loss.detach()
