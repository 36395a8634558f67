"""BEIR downloads: once per machine under a lock, checked against an md5, unpacked atomically; served here by a
loopback HTTP server holding a small BEIR zip."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context

import pytest

from retrieval_lab.data.beir import load_beir
from retrieval_lab.data.download import BEIR_MD5, DatasetUnavailableError, ensure_beir_dataset
from tests.conftest import FAST_TRAIN_OVERRIDES, TRAIN_CORPUS, TRAIN_QRELS, TRAIN_QUERIES, write_beir
from tests.test_train import _cli


class CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        CountingHandler.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def zip_server(tmp_path):
    """``http://127.0.0.1:<port>/{name}.zip`` serving the training-sized tiny dataset as ``tinyzip.zip``; yields
    the URL template and the archive's md5."""
    write_beir(tmp_path / "src", name="tinyzip", corpus=TRAIN_CORPUS, queries=TRAIN_QUERIES, qrels=TRAIN_QRELS)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "tinyzip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "src" / "beir").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "src" / "beir"))
    CountingHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{{name}}.zip", hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()


def _ensure(root, url, md5):
    return str(ensure_beir_dataset("tinyzip", root, url=url, md5=md5))


def test_concurrent_processes_download_once(zip_server, tmp_path):
    url, md5 = zip_server
    root = tmp_path / "data" / "beir"
    with get_context("spawn").Pool(3) as pool:
        folders = pool.starmap(_ensure, [(root, url, md5)] * 3)
    assert len(set(folders)) == 1 and CountingHandler.requests == ["/tinyzip.zip"]
    assert len(load_beir("tinyzip", tmp_path / "data", download=False).corpus) == len(TRAIN_CORPUS)
    assert sorted(p.name for p in root.iterdir()) == [".tinyzip.lock", "tinyzip"]  # no temporary folder left


def test_a_wrong_checksum_unpacks_nothing(zip_server, tmp_path):
    url, _ = zip_server
    with pytest.raises(DatasetUnavailableError, match=r"tinyzip.zip: the archive's md5 is [0-9a-f]{32}, expected 0+"):
        ensure_beir_dataset("tinyzip", tmp_path / "beir", url=url, md5="0" * 32)
    assert [p.name for p in (tmp_path / "beir").iterdir()] == [".tinyzip.lock"]


def test_beir_checksums_cover_its_public_archives():
    assert BEIR_MD5["scifact"] == "5f7d1de60b170fc8027bb7898e2efca1"
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in BEIR_MD5.values())


def test_two_ddp_ranks_download_once_and_both_load(zip_server, tmp_path):
    url, md5 = zip_server
    run_dir = tmp_path / "run"
    done = _cli(["data=beir", "data.name=tinyzip", f"data.download_url='{url}'", f"data.download_md5={md5}",
                 f"paths.data_root={tmp_path / 'empty'}", f"hydra.run.dir={run_dir}", *FAST_TRAIN_OVERRIDES,
                 "trainer=ddp", "trainer.max_epochs=1", "task.splits=[]", "task.export=false"],
                capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert CountingHandler.requests == ["/tinyzip.zip"]  # one download for the two ranks
    # both ranks ran (and so loaded the dataset: the run fails otherwise) on the one download; whether the second
    # rank waited on the lock or arrived after it was released is timing, so the log line saying so is not asserted
    output = done.stdout + done.stderr  # Lightning: stderr, or Hydra's console (stdout) when Hydra set up logging first
    assert "MEMBER: 1/2" in output and "MEMBER: 2/2" in output
