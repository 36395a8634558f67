"""Evaluation's corpus encoding sharded across DDP ranks gives the run an unsharded encoding gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from retrieval_lab.data.beir import Document
from retrieval_lab.index import encode
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.retrievers.dense import DenseRetriever, sharded_encoding
from tests.conftest import TINY_BERT, TRAIN_CORPUS, TRAIN_QUERIES

CORPUS = {d: Document(t, x) for d, (t, x) in list(TRAIN_CORPUS.items())[:23]}  # 23: not a multiple of 2 ranks


def _rank(rank: int, world: int, folder: str, cache: str) -> None:
    """``cache``: the embedding cache folder, "shared" by the ranks or one per rank ("per-node", as on nodes that
    do not share a disk: only rank 0's ever holds vectors)."""
    os.environ.update(MASTER_ADDR="127.0.0.1")
    cache_dir = f"{folder}/cache" if cache == "shared" else f"{folder}/node{rank}/cache"
    # precision=auto as two processes on a busy CPU resolved it in CI (each measures bf16 against fp32 itself):
    # rank 1 sees fast bf16, rank 0 not. The shards must still come out in one precision, rank 0's.
    encode.has_fast_bf16 = lambda device: rank == 1
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        encoder = BiEncoder(config_overrides=TINY_BERT).eval()
        alone = DenseRetriever(encoder, show_progress=False, shard_across_ranks=True)
        alone.index(CORPUS)  # outside sharded_encoding(): each rank on its own, no collective (the dev evaluation's)
        assert alone.faiss is not None
        sharded = DenseRetriever(encoder, show_progress=False, cache_dir=cache_dir, shard_across_ranks=True)
        with sharded_encoding():
            sharded.index(CORPUS)
        if rank == 0:
            run = sharded.search(TRAIN_QUERIES, 5)
            plain = DenseRetriever(encoder, show_progress=False, shard_across_ranks=False)
            plain.index(CORPUS)
            vectors = sharded.faiss.index.reconstruct_n(0, len(CORPUS))
            result = {"run": run, "plain": plain.search(TRAIN_QUERIES, 5), "max_diff": float(
                abs(vectors - plain.faiss.index.reconstruct_n(0, len(CORPUS))).max())}  # fmt: skip
            Path(folder, "result.json").write_text(json.dumps(result))
        else:
            assert sharded.faiss is None  # only rank 0 holds the index
        dist.barrier()
        again = DenseRetriever(encoder, show_progress=False, cache_dir=cache_dir, shard_across_ranks=True)
        with sharded_encoding():
            again.index(CORPUS)  # rank 0 finds the saved vectors and says so: no rank encodes, no rank waits
        assert again.timings.get("embeddings_reused") == 1.0  # on rank 1 too, whether or not it could see them
        if rank == 0:
            assert again.search(TRAIN_QUERIES, 5) == run
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("cache", ["shared", "per-node"])
def test_two_ranks_encode_halves_and_rank_0_ranks_as_one_process_would(tmp_path, cache):
    repo = Path(__file__).resolve().parent.parent
    code = "import sys; import tests.test_sharded_eval as t; t._rank(int(sys.argv[1]), 2, sys.argv[2], sys.argv[3])"
    ranks = [subprocess.Popen([sys.executable, "-c", code, str(r), str(tmp_path), cache], cwd=repo,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    assert all(p.returncode == 0 for p in ranks), outputs
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["max_diff"] == 0.0  # the gathered vectors, back in corpus order, are the unsharded ones
    assert result["run"] == result["plain"]
