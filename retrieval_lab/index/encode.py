"""The one corpus-encoding path: evaluation, ANN negative mining and index refresh all call ``encode_texts``."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from retrieval_lab.models.base import Encoder

SIDES = ("queries", "docs")
PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16", "int8")


def _pad(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, L)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products beat fp32 here: on CUDA where bf16 is supported; on a CPU with AMX, or with
    AVX512-BF16 where a bf16 matrix product measures at least 1.2x faster than fp32 (``cpu_bf16_speedup``).

    Elsewhere (AVX2-only CPUs) PyTorch emulates bf16 GEMMs and they run hundreds of times slower than fp32. On
    an AVX512-BF16 CPU without AMX a 2048 x 2048 bf16 product ran at 0.56x fp32 here, and bf16 encoding was
    slower than fp32 (issue 13), so AVX512-BF16 alone is not taken as fast without measuring.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True
        return bool(torch.cpu._is_avx512_bf16_supported()) and cpu_bf16_speedup() >= 1.2
    return False


SPEEDUP_ENV = "RETRIEVAL_LAB_CPU_BF16_SPEEDUP"


@functools.cache
def cpu_bf16_speedup(n: int = 1024, repeats: int = 3) -> float:
    """fp32 time over bf16 time of an ``n`` x ``n`` matrix product on this CPU (best of ``repeats``), measured
    once per process (about 0.1 s). Call it only where bf16 is not emulated: emulated, it takes seconds.

    The first measurement is written to the ``RETRIEVAL_LAB_CPU_BF16_SPEEDUP`` environment variable, and a process
    that finds it set reads it instead of measuring: the DDP ranks Lightning starts and the ANCE inferencer inherit
    their parent's figure, so ``auto`` resolves alike in all of them (measured in each, on a busy CPU, it fell on
    both sides of the 1.2x line). Set it yourself to pin the decision, e.g. for ranks launched separately."""
    if (given := os.environ.get(SPEEDUP_ENV)) is not None:
        try:
            return float(given)
        except ValueError:
            raise ValueError(f"{SPEEDUP_ENV} must be a number (fp32 time over bf16 time), got {given!r}") from None
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    speedup = best[torch.float32] / best[torch.bfloat16]
    os.environ[SPEEDUP_ENV] = f"{speedup:.4f}"
    return speedup


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes ``bf16-autocast`` where bf16 is faster than fp32 (``has_fast_bf16``) and ``fp32``
    elsewhere. Autocast, not the all-bf16 copy: on the default run's best checkpoint, dev nDCG@10 under
    autocast equalled fp32's to five decimals (0.87809) where the bf16 weights gave 0.88547 (issue 13)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16-autocast" if has_fast_bf16(device) else "fp32"
    return precision


def from_rank_0(value, world: int):
    """``value`` as rank 0 holds it, on every rank: a broadcast where ``world`` > 1, so every rank must call it.

    For the decisions ranks that encode a corpus together must share: ``precision=auto`` (each process measures
    bf16 against fp32 itself, and on a busy machine two processes measured on opposite sides of the 1.2x line, so
    their shards came out in different precisions) and whether the embedding cache holds the vectors."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(part: np.ndarray, total: int, rank: int, world: int) -> np.ndarray | None:
    """Rank ``r`` holds rows ``r``, ``r + world``, ... of a ``total``-row matrix: rank 0 gets all of them in order,
    the other ranks ``None`` (every rank must call it)."""
    if world == 1:
        return part
    parts = [None] * world if rank == 0 else None
    torch.distributed.gather_object(part, parts, dst=0)
    if rank != 0:
        return None
    rows = np.empty((total, part.shape[1]), dtype=part.dtype)
    for r, shard in enumerate(parts):
        rows[r::world] = shard
    return rows


def bf16_copy(encoder: Encoder) -> Encoder:
    """A bfloat16 copy of ``encoder`` for inference: new tensors, no gradients, the original left untouched.

    The parameters are cast straight into the copy (through deepcopy's memo), so no second fp32 copy is made and
    the live weights, their gradients and any hooks on them (DDP's reducer, the optimizer) are never touched.
    Casting the training weights in place and back instead corrupted DDP's gradient state and hung training
    (issue 13).
    """
    with torch.no_grad():
        memo = {id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
                for p in encoder.parameters()}  # fmt: skip
        copy_ = copy.deepcopy(encoder, memo)
    return copy_.to(torch.bfloat16).eval()


def int8_copy(encoder: Encoder) -> Encoder:
    """A copy of ``encoder`` whose linear layers run int8 matrix products (PyTorch's dynamic quantization: weights
    quantized once per output channel, activations per batch), for CPU inference; the attention products stay
    fp32 and the original is left untouched. Opt-in (``precision=int8``), never ``auto``: the vectors change
    (cosine to fp32's about 0.98 on MiniLM), so ``benchmarks/encode.py`` measures its speed and nDCG@10 beside
    fp32's before a run relies on it."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao, still shipped
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(encoder).cpu().eval(), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)  # fmt: skip


@contextlib.contextmanager
def attention_kernels(device: torch.device | str) -> Iterator[None]:
    """On CUDA, scaled-dot-product attention without its cuDNN backend (flash, memory-efficient or math instead);
    elsewhere nothing changes. For bf16 on a Hopper GPU, PyTorch picks cuDNN attention, which builds a graph for
    each new input shape: ~2 ms of CPU per attention call, paid again at every padded length the length-sorted
    batches bring. On an H200, bf16-autocast encoding of 2,000 SciFact documents (each run in a fresh process) ran at
    515 docs/s with cuDNN attention and 2,963 without, and a bf16-mixed training step took 0.22 s at new lengths
    against 0.065 s at seen ones (docs/scaling.md, issue 19)."""
    if torch.device(device).type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def _inference_encoder(encoder: Encoder, precision: str, device: torch.device) -> Iterator[Encoder]:
    """The module to run in eval mode under ``precision``: ``encoder`` itself for fp32 and bf16-autocast
    (autocast around the forward), a bf16 copy made once per call for bf16. The training module's weights and
    gradients stay as they are; its train/eval mode is restored."""
    if precision == "bf16":
        yield bf16_copy(encoder)
        return
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError(f"precision=int8 (dynamic quantization) runs on the CPU only, not {device}")
        yield int8_copy(encoder)
        return
    was_training = encoder.training
    encoder.eval()
    try:
        if precision == "bf16-autocast":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield encoder
        else:
            yield encoder
    finally:
        encoder.train(was_training)


def encoded_batches(
    encoder: Encoder,
    texts: Sequence[str],
    side: str,
    batch_size: int,
    precision: str,
    show_progress: bool,
    device: str | torch.device | None,
    max_length: int | None,
    what: str = "",
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The one encoding loop: ``texts`` tokenized once without padding, sorted by length and batched, so each
    batch pads only to its own longest member, encoded in eval mode under ``precision``. Yields each batch's
    rows (positions in ``texts``) and the encoder's output for them, in float32 on the CPU: ``(b, d)`` from a
    single-vector encoder, ``(b, L, dim)`` token vectors from a multi-vector one. Call it under
    ``torch.inference_mode()``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not texts:
        raise ValueError("encoding got no texts")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    precision = resolve_precision(precision, device)
    tokenize = encoder.tokenize_queries if side == "queries" else encoder.tokenize_docs
    ids = tokenize(list(texts), padding=False, max_length=max_length)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    with _inference_encoder(encoder, precision, device) as model, attention_kernels(device):
        encode = model.encode_queries if side == "queries" else model.encode_docs
        bar = tqdm(total=len(texts), desc=f"encode {side}{what}", unit="text", disable=not show_progress)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in _pad([ids[i] for i in rows], encoder.pad_token_id).items()}
            yield rows, encode(batch).float().cpu()
            bar.update(len(rows))
        bar.close()


@torch.inference_mode()
def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    side: str = "docs",
    batch_size: int = 64,
    precision: str = "auto",
    show_progress: bool = True,
    device: str | torch.device | None = None,
    max_length: int | None = None,
) -> np.ndarray:
    """Encode ``texts`` as queries or documents; returns float32 vectors ``(N, d)`` in the input order.

    ``precision`` is ``fp32``, ``bf16-autocast`` (autocast around the forward), ``bf16`` (a bfloat16 copy of the
    weights for the call), ``int8`` (a dynamically quantized copy, CPU only: ``int8_copy``) or ``auto``
    (``bf16-autocast`` where bf16 is faster, else ``fp32``; see ``resolve_precision`` and
    ``benchmarks/encode.py``). ``max_length`` cuts texts shorter than the encoder's own max length.
    """
    rows, chunks = [], []
    for batch_rows, vectors in encoded_batches(
        encoder, texts, side, batch_size, precision, show_progress, device, max_length
    ):
        if vectors.ndim != 2:
            raise ValueError(f"{type(encoder).__name__} gives token vectors; index them with retriever=colbert")
        rows.append(batch_rows)
        chunks.append(vectors)
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[np.concatenate(rows)] = torch.cat(chunks).numpy()
    return out
