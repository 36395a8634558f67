"""Cluster batches: k-means packing keeps clusters together in whole, shuffled batches; a training run batches by
cluster, keeps each epoch's order in its checkpoint and replays it after a resume; bad settings are refused."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from retrieval_lab.main import train
from retrieval_lab.training.clusters import ClusterBatchSampler, ClusterOrders, pack, spherical_kmeans
from tests.conftest import FAST_TRAIN_OVERRIDES


def _blobs(per: int = 8, dims: int = 16, groups: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dims)[:groups] * 5
    labels = np.repeat(np.arange(groups), per)
    return centres[labels] + rng.normal(0, 0.3, (groups * per, dims)), labels


@pytest.mark.parametrize("order", ["random", "tour"])
def test_packed_batches_come_whole_from_one_cluster_each(order):
    vectors, truth = _blobs()
    assignment, centroids = spherical_kmeans(vectors, 4, seed=0)
    sequence = pack(assignment, centroids, 8, order, random.Random(0))
    assert sorted(sequence) == list(range(32))  # every pair once
    batches = [sequence[i : i + 8] for i in range(0, 32, 8)]
    assert all(len(set(truth[b])) == 1 for b in batches)  # one true group per batch
    again = pack(assignment, centroids, 8, order, random.Random(1))
    assert again != sequence  # another epoch, another order


def test_sampler_serves_each_rank_its_share_of_every_global_batch():
    vectors, _ = _blobs()
    orders = ClusterOrders(lambda: vectors, global_batch=8, seed=0)
    ranks = [list(ClusterBatchSampler(orders, 32, 4, rank, 2)) for rank in (0, 1)]
    order = orders(0)
    assert [i for _, i, _ in ranks[0][:4]] + [i for _, i, _ in ranks[1][:4]] == order[:8]
    assert [b for _, _, b in ranks[0]] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # global batch numbers
    assert orders.state_dict()["orders"]["0"] == order


def test_a_cluster_batched_run_replays_its_orders_after_a_resume(compose_cfg, train_data, tmp_path):
    base = [*FAST_TRAIN_OVERRIDES, "datamodule.batching=cluster", "datamodule.cluster.recluster=true",
            "task.export=false"]  # fmt: skip
    train(compose_cfg(base, data_root=train_data))  # 2 epochs of 4 batches
    straight = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)
    (tmp_path / "out").rename(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="interrupted"):  # last.ckpt at step 2, stopped at step 3
        train(compose_cfg([*base, "+callbacks.stop._target_=tests.test_contriever.RaiseAtStep",
                           "+callbacks.stop.step=3"], data_root=train_data))  # fmt: skip
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    train(compose_cfg([*base, f"ckpt_path={last}"], data_root=train_data))
    resumed = torch.load(last, weights_only=False)
    key = "RetrievalDataModule"  # Lightning keeps a data module's state under its class name
    orders = straight[key]["cluster_orders"]["orders"]
    assert set(orders) == {"0", "1"} and orders == resumed[key]["cluster_orders"]["orders"]
    assert all(sorted(o) == sorted(set(o)) for o in orders.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["datamodule.batching=clusters"], "datamodule.batching must be random or cluster"),
        (["datamodule.batching=cluster", "datamodule.cluster.order=nearest"], "datamodule.cluster.order"),
        (["datamodule.batching=cluster", "+datamodule.cluster.size=8"], "unknown keys"),
    ],
)
def test_bad_cluster_settings_are_refused(compose_cfg, train_data, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(compose_cfg([*FAST_TRAIN_OVERRIDES, *overrides], data_root=train_data))


def test_cluster_batches_cover_the_pairs_once_and_are_more_alike_than_random_ones():
    rng = np.random.default_rng(1)
    vectors = rng.normal(0, 1, (203, 24)) + np.repeat(rng.normal(0, 2, (7, 24)), 29, axis=0)  # 7 loose groups
    assignment, centroids = spherical_kmeans(vectors, 203 // 16, seed=0)
    sequence = pack(assignment, centroids, 16, "random", random.Random(0))
    assert len(sequence) == len(set(sequence)) == 203 - 203 % 16  # each pair at most once; only a remainder left
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def mean_inside(order: list[int]) -> float:
        batches = [unit[order[i : i + 16]] for i in range(0, len(order), 16)]
        return float(np.mean([(b @ b.T)[~np.eye(16, dtype=bool)].mean() for b in batches]))

    shuffled = list(range(203))
    random.Random(0).shuffle(shuffled)
    assert mean_inside(sequence) > mean_inside(shuffled[: len(sequence)]) + 0.2


def test_bm25_svd_vectors_put_texts_on_one_topic_together():
    from retrieval_lab.training.clusters import bm25_svd_vectors

    topics = ["aspirin heart attack risk", "vitamin colds immune winter", "smoking lung cancer tobacco"]
    texts = [f"{topics[i % 3]} study number {i} shows" for i in range(30)]
    vectors = bm25_svd_vectors(texts, dims=4)
    assignment, _ = spherical_kmeans(vectors, 3, seed=0)
    assert vectors.shape == (30, 4)
    assert all(len({assignment[j] for j in range(i, 30, 3)}) == 1 for i in range(3))  # one cluster per topic


def test_a_run_clusters_with_bm25_vectors(compose_cfg, train_data, tmp_path, monkeypatch):
    import retrieval_lab.training.datamodule as datamodule

    calls = []
    real = datamodule.bm25_svd_vectors
    monkeypatch.setattr(datamodule, "bm25_svd_vectors", lambda *a: calls.append(a[1]) or real(*a))
    overrides = ["datamodule.batching=cluster", "datamodule.cluster.embedder=bm25", "datamodule.cluster.svd_dims=4"]
    train(compose_cfg([*FAST_TRAIN_OVERRIDES, *overrides, "task.export=false"], data_root=train_data))
    assert calls == [4]  # the pairs were embedded by BM25 + SVD, once (no reclustering)
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)["RetrievalDataModule"]
    assert len(state["cluster_orders"]["assignment"]) == 16  # every training pair has a cluster
