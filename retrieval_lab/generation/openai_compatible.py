"""``generator=openai``: any OpenAI-compatible chat endpoint (llama.cpp's server, vLLM, OpenAI itself) over httpx.

Each answer is one ``POST {base_url}/chat/completions`` with its own seed (``seed + sample``), so sampled answers
differ and a deterministic server repeats them. At most ``max_concurrency`` requests are in flight. A refused
connection, a timeout, HTTP 429 or 5xx is retried ``retries`` times with exponential backoff; a reply without
``choices[0].message.content`` as text is garbage and fails at once. The first job runs alone, so a server that
is down or speaks another protocol fails with one error naming the URL before the query set is sent."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx

from retrieval_lab.generation.base import GenerationError, Generator

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIGenerator(Generator):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.7,
        max_tokens: int = 128,
        top_p: float = 1.0,
        seed: int = 0,
        max_concurrency: int = 4,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        system_prompt: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(model, cache_dir, temperature, max_tokens, seed, top_p, system_prompt)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"generator.base_url must be an http(s) URL, got {base_url!r}")
        if max_concurrency < 1 or retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(
                "generator.max_concurrency must be >= 1, generator.retries >= 0, generator.timeout_s > 0 and "
                f"generator.backoff_s >= 0; got {max_concurrency}, {retries}, {timeout_s}, {backoff_s}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.max_concurrency, self.retries, self.backoff_s = max_concurrency, retries, backoff_s
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.requests = 0
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    def _body(self, prompt: str, sample: int) -> dict:
        return {
            "model": self.model, "messages": self.messages(prompt), "temperature": self.temperature,
            "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.sample_seed(sample), "n": 1,
        }  # fmt: skip

    def _post(self, body: dict) -> httpx.Response:
        with self._lock:
            self.in_flight += 1
            self.requests += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self.client.post(self.url, json=body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _complete(self, prompt: str, sample: int) -> str:
        body = self._body(prompt, sample)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._post(body)
            except httpx.TransportError as err:  # refused, reset, timed out
                if last:
                    raise GenerationError(
                        f"no answer from the LLM server at {self.url} after {attempt + 1} tries: "
                        f"{type(err).__name__}: {err}. Is it running? (generator.base_url)"
                    ) from err
            else:
                if response.status_code == 200:
                    return self._parse(response)
                if response.status_code not in RETRY_STATUS or last:
                    raise GenerationError(
                        f"the LLM server at {self.url} answered HTTP {response.status_code}: {response.text[:300]!r}"
                    )
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _parse(self, response: httpx.Response) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            raise GenerationError(
                f"the LLM server at {self.url} sent a reply that is not an OpenAI chat completion "
                f"({type(err).__name__}: {err}): {response.text[:300]!r}"
            ) from err
        if not isinstance(content, str):
            raise GenerationError(f"the LLM server at {self.url} sent message content {content!r}, not text")
        return content.strip()

    def _complete_many(self, jobs: Sequence[tuple[str, int]], done: Callable[[int, str], None]) -> None:
        if not jobs:
            return
        done(0, self._complete(*jobs[0]))  # alone: a dead or foreign server fails here, once
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self._complete, prompt, sample): j for j, (prompt, sample) in enumerate(jobs)
                       if j > 0}  # fmt: skip
            try:
                for future in as_completed(futures):  # cached as each arrives
                    done(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        self.client.close()
