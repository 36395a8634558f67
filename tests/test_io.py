"""Atomic writes: a file or folder is either the old one or the complete new one, never half of either."""

from __future__ import annotations

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
