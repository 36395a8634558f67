"""LameR (Shen et al. 2023, "Large language models are strong zero-shot retriever"): BM25 and an LLM only.

BM25's top ``num_candidates`` documents go into a prompt beside the query (most of them are wrong, the prompt
says); the LLM writes ``num_answers`` answers; the query repeated before each answer, ``q a1 q a2 ... q aN``,
is the new BM25 query. The candidates ground the answers in the corpus's vocabulary, which is what BM25 needs;
repeating ``q`` keeps the original terms' weight against long answers."""

from __future__ import annotations

import time
from collections.abc import Mapping

from retrieval_lab.data.beir import Document
from retrieval_lab.eval.trec import Run
from retrieval_lab.generation.base import Generator
from retrieval_lab.retrievers.base import Retriever
from retrieval_lab.retrievers.bm25 import BM25Retriever

# The paper's Table 1 prompt in substance: the question, the numbered candidates, "most of these passages are
# wrong", "write a correct answering passage"; {domain} is data.domain ("scientific paper passage" on SciFact).
DEFAULT_PROMPT = (
    'Give a question "{query}" and its possible answering passages (most of these passages are wrong) '
    "enumerated as:\n{candidates}\nPlease write a correct answering {domain}."
)


def cut_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace tokens of ``text`` (the prompt's length bound, the same for any LLM).

    >>> cut_words("a  b\\nc d", 3)
    'a b c'
    """
    return " ".join(text.split()[:max_words])


def check_template(template: str, fields: tuple[str, ...], key: str) -> None:
    """A prompt template that formats with exactly the named fields, or one error naming the config key."""
    try:
        template.format(**dict.fromkeys(fields, "x"))
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{key} must use only the fields {{{'}, {'.join(fields)}}}: {err!r} in {template!r}") from err
    if "{query}" not in template:
        raise ValueError(f"{key} has no {{query}} field: {template!r}")


def expand_query(query: str, answers: list[str]) -> str:
    """``q a1 q a2 ... q aN``, LameR's BM25 query.

    >>> expand_query("q", ["a1", "a2"])
    'q a1 q a2'
    """
    return " ".join(f"{query} {answer}" for answer in answers)


class LameRRetriever(Retriever):
    def __init__(
        self,
        bm25: BM25Retriever,
        generator: Generator,
        num_candidates: int = 10,
        num_answers: int = 5,
        max_words: int = 128,
        domain: str = "passage",
        prompt: str = DEFAULT_PROMPT,
    ) -> None:
        if num_candidates < 0 or num_answers < 1 or max_words < 1:
            raise ValueError(
                "retriever.num_candidates must be >= 0, retriever.num_answers >= 1 and retriever.max_words >= 1; "
                f"got {num_candidates}, {num_answers}, {max_words}"
            )
        check_template(prompt, ("query", "candidates", "domain"), "retriever.prompt")
        self.bm25, self.generator = bm25, generator
        self.num_candidates, self.num_answers, self.max_words = num_candidates, num_answers, max_words
        self.domain, self.prompt = domain, prompt
        self.texts: list[str] = []
        self.expansions: dict[str, dict] = {}  # per query: prompt, answers, expanded query (the run folder keeps it)
        self.timings: dict[str, float] = {}

    def index(self, corpus: Mapping[str, Document]) -> None:
        self.bm25.index(dict(corpus))
        self.texts = [doc.full_text() for doc in corpus.values()]

    def build_prompts(self, queries: dict[str, str]) -> list[str]:
        """One prompt per query, its BM25 candidates numbered in BM25 order, each cut to ``max_words``."""
        texts = list(queries.values())
        if self.num_candidates:
            rows, scores = self.bm25.search_ids(texts, self.num_candidates)
        else:
            rows = scores = [[] for _ in texts]
        prompts = []
        for query, row, score in zip(texts, rows, scores, strict=True):
            kept = [self.texts[r] for r, s in zip(row, score, strict=True) if s > 0]
            candidates = "\n".join(f"{i}. {cut_words(t, self.max_words)}" for i, t in enumerate(kept, start=1))
            prompts.append(self.prompt.format(query=cut_words(query, self.max_words), candidates=candidates,
                                              domain=self.domain))  # fmt: skip
        return prompts

    def search(self, queries: dict[str, str], k: int) -> Run:
        if not self.texts:
            raise RuntimeError("LameRRetriever.search called before index()")
        prompts = self.build_prompts(queries)
        before = dict(self.generator.timings)
        answers = self.generator.generate(prompts, self.num_answers)
        expanded = {qid: expand_query(text, a) for (qid, text), a in zip(queries.items(), answers, strict=True)}
        self.expansions = {
            qid: {"prompt": p, "answers": a, "query": expanded[qid]}
            for qid, p, a in zip(queries, prompts, answers, strict=True)
        }
        start = time.perf_counter()
        run = self.bm25.search(expanded, k)
        self.timings.update(generation_costs(self.generator, before, len(queries)))
        self.timings["search_s_per_query"] = (time.perf_counter() - start) / max(1, len(queries))
        return run


def generation_costs(generator: Generator, before: dict[str, float], n_queries: int) -> dict[str, float]:
    """What one query set cost the generator: answers generated and cached, generation seconds per query."""
    delta = {k: generator.timings[k] - before.get(k, 0) for k in generator.timings}
    return {
        "generated": delta["generated"],
        "generation_cache_hits": delta["cache_hits"],
        "generation_s_per_query": delta["generation_s"] / max(1, n_queries),
    }
