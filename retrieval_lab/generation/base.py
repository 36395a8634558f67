"""Text generators behind LLM-assisted retrieval (LameR, HyDE): one interface, an on-disk cache of generations.

A generator turns prompts into ``n`` sampled answers each. Every answer is cached on disk under a key of the model,
the prompt, the sampling settings and the sample's index, written atomically: a re-run with the same settings
sends no request and reproduces its answers exactly; a changed setting misses the cache instead of reusing stale
answers."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

from retrieval_lab.utils.io import write_json

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """A generation backend failed (server down, malformed answer, model missing): the message names where."""


class GenerationCache:
    """One JSON file per generated answer, ``<folder>/<key[:2]>/<key>.json``, written by rename."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(model: str, prompt: str, settings: dict, sample: int) -> str:
        blob = json.dumps({"model": model, "prompt": prompt, "settings": settings, "sample": sample}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:  # only a hand-edited file can be broken
            raise GenerationError(f"{path}: not a generation cache entry ({err}); delete it to regenerate") from err

    def put(self, key: str, text: str, meta: dict) -> None:
        write_json(self._path(key), {"text": text, **meta})


class Generator(ABC):
    """``generate(prompts, n)`` -> ``n`` answers per prompt, served from the cache where it can.

    Subclasses implement ``_complete(prompt, sample)`` (one uncached answer) and may override ``_complete_many``
    to run several at once; each answer is cached the moment it arrives, so a run stopped half-way keeps what it
    paid for. ``timings`` counts generated answers, cache hits and seconds spent generating."""

    def __init__(
        self, model: str, cache_dir: str | Path | None, temperature: float, max_tokens: int, seed: int,
        top_p: float = 1.0, system_prompt: str | None = None,
    ) -> None:  # fmt: skip
        if not 0 < top_p <= 1:
            raise ValueError(f"generator.top_p must be in (0, 1], got {top_p}")
        if temperature < 0:
            raise ValueError(f"generator.temperature must be >= 0, got {temperature}")
        if max_tokens < 1:
            raise ValueError(f"generator.max_tokens must be >= 1, got {max_tokens}")
        if not model:
            raise ValueError("generator.model is empty: name the model the backend serves or loads")
        self.model, self.temperature, self.max_tokens, self.seed = model, temperature, max_tokens, seed
        self.top_p, self.system_prompt = top_p, system_prompt
        self.cache = GenerationCache(cache_dir) if cache_dir else None
        self.timings: dict[str, float] = {"generated": 0, "cache_hits": 0, "generation_s": 0.0}

    @property
    def settings(self) -> dict:
        """What changes an answer besides the prompt: part of every cache key."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
                "top_p": self.top_p, "system_prompt": self.system_prompt}  # fmt: skip

    def messages(self, prompt: str) -> list[dict]:
        """The chat turns sent for ``prompt``: the system prompt if any, then the prompt as the user's."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": prompt}]

    def sample_seed(self, sample: int) -> int:
        """Sample ``i`` of every prompt uses seed ``seed + i``: samples differ, re-runs repeat."""
        return self.seed + sample

    @abstractmethod
    def _complete(self, prompt: str, sample: int) -> str: ...

    def _complete_many(self, jobs: Sequence[tuple[str, int]], done: Callable[[int, str], None]) -> None:
        """Answer every ``(prompt, sample)`` job, calling ``done(job_index, text)`` as each answer arrives."""
        for j, (prompt, sample) in enumerate(jobs):
            done(j, self._complete(prompt, sample))

    def generate(self, prompts: Sequence[str], n: int = 1) -> list[list[str]]:
        if n < 1:
            raise ValueError(f"number of answers per prompt must be >= 1, got {n}")
        answers: list[list[str | None]] = [[None] * n for _ in prompts]
        keys, todo = {}, []
        for i, prompt in enumerate(prompts):
            for s in range(n):
                if self.cache is not None:
                    keys[i, s] = self.cache.key(self.model, prompt, self.settings, s)
                    if (hit := self.cache.get(keys[i, s])) is not None:
                        answers[i][s] = hit
                        self.timings["cache_hits"] += 1
                        continue
                todo.append((i, s))

        def done(j: int, text: str) -> None:
            i, s = todo[j]
            answers[i][s] = text
            self.timings["generated"] += 1
            if self.cache is not None:
                self.cache.put(keys[i, s], text, {"model": self.model, "settings": self.settings, "sample": s})

        if todo:
            start = time.perf_counter()
            try:
                self._complete_many([(prompts[i], s) for i, s in todo], done)
            finally:
                took = time.perf_counter() - start
                self.timings["generation_s"] += took
            log.info("generated %d answers in %.1fs (%d from the cache)", len(todo), took,
                     len(prompts) * n - len(todo))  # fmt: skip
        return answers  # type: ignore[return-value]
