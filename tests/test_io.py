"""Atomic writes: a file or folder is either the old one or the complete new one, never half of either."""

from __future__ import annotations

import threading

import pytest

from retrieval_lab.utils.io import atomic_dir, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "export"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "first"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary or old folder left


def test_write_json_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "metrics.json", {"test": {"ndcg@10": 0.5}})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_dir_replacement_leaves_no_moment_without_the_folder(tmp_path):
    from retrieval_lab.utils.io import exchange_paths

    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    if not exchange_paths(probe_a, probe_b):
        pytest.skip("this system cannot exchange two paths atomically (renameat2): atomic_dir renames in two steps")
    target = tmp_path / "export"
    with atomic_dir(target) as tmp:
        (tmp / "weights.txt").write_text("0")
    missing, stop = [], threading.Event()

    def read_forever():
        while not stop.is_set():
            try:
                int((target / "weights.txt").read_text())  # never absent, never empty
            except (FileNotFoundError, ValueError) as err:
                missing.append(repr(err))

    reader = threading.Thread(target=read_forever)
    reader.start()
    for version in range(1, 150):
        with atomic_dir(target) as tmp:
            (tmp / "weights.txt").write_text(str(version))
    stop.set()
    reader.join()
    assert missing == []
    assert (target / "weights.txt").read_text() == "149"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "export"]
