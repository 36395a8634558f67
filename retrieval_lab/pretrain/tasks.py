"""Paragraph-level pre-training tasks (Chang et al., ICLR 2020) that turn a linked corpus into training examples.

Every task ``prepare``s once on a ``LinkedCorpus`` (indexing what it can sample from) and then ``sample``s one
example from the caller's ``random.Random``, so the stream is a pure function of the seed the data module
derives per example. Pair tasks return a ``Pair`` (a query and its positive document; the other documents of
the batch are the negatives); ``MaskedLanguageModel`` and ``RetroMAE`` return a ``MaskedText`` for their losses.

- ICT (Lee et al., 2019): a random sentence of a passage is the query; the rest of the passage, with the title,
  is the document; with probability ``keep_query_prob`` the sentence stays in the document.
- BFS: a sentence of the article's lead section is the query; a random passage of the same article (by default
  not the one the sentence came from) is the document.
- WLP: a sentence of the lead of article A is the query; a random passage of an article B that links to A is
  the document. A corpus without links is an error.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from retrieval_lab.data.beir import Document
from retrieval_lab.data.sentences import split_sentences
from retrieval_lab.data.wiki import Article, LinkedCorpus


@dataclass(frozen=True)
class Pair:
    query: str
    document: Document
    source: dict = field(default_factory=dict)  # where it came from (article ids, indices): for checks and logs

    @property
    def group(self) -> str:
        """What the query is about: the article (ICT, BFS) or link target (WLP). Two pairs of one group are
        not each other's negatives (false-negative masking)."""
        return f"target:{self.source['target']}" if "target" in self.source else f"article:{self.source['article']}"


@dataclass(frozen=True)
class MaskedText:
    text: str
    source: dict = field(default_factory=dict)


class PretrainTask(ABC):
    name: str = ""
    masked_lm: bool = False  # examples are MaskedText (MLM loss), not Pairs

    @abstractmethod
    def prepare(self, corpus: LinkedCorpus) -> None: ...

    @abstractmethod
    def sample(self, rng: random.Random) -> Pair | MaskedText: ...


def _lead_sentences(article: Article) -> list[tuple[int, str]]:
    """``(passage index, sentence)`` of the lead section; lead passages come first in ``article.passages``."""
    return [(i, s) for i, passage in enumerate(article.lead) for s in split_sentences(passage)]


def _document(article: Article, text: str, with_title: bool) -> Document:
    return Document(article.title if with_title else "", text)


def _require(units: list, task: str, corpus: LinkedCorpus, what: str) -> list:
    if not units:
        raise ValueError(f"pretrain_task={task}: corpus {corpus.name!r} has no {what}")
    return units


class InverseCloze(PretrainTask):
    name = "ict"

    def __init__(self, keep_query_prob: float = 0.1, min_sentences: int = 2, doc_title: bool = True) -> None:
        if not 0 <= keep_query_prob <= 1:
            raise ValueError(f"pretrain_task keep_query_prob must be in [0, 1], got {keep_query_prob}")
        if min_sentences < 2:
            raise ValueError(f"pretrain_task min_sentences must be >= 2 (a query and a rest), got {min_sentences}")
        self.keep_query_prob, self.min_sentences, self.doc_title = keep_query_prob, min_sentences, doc_title

    def prepare(self, corpus: LinkedCorpus) -> None:
        self.articles = corpus.articles
        units = [(a.id, i) for a in corpus.articles.values() for i, p in enumerate(a.passages)
                 if len(split_sentences(p)) >= self.min_sentences]  # fmt: skip
        self.units = _require(units, "ict", corpus, f"passage of {self.min_sentences}+ sentences")

    def sample(self, rng: random.Random) -> Pair:
        article_id, p = self.units[rng.randrange(len(self.units))]
        article = self.articles[article_id]
        sentences = split_sentences(article.passages[p])
        i = rng.randrange(len(sentences))
        kept = rng.random() < self.keep_query_prob
        rest = sentences if kept else sentences[:i] + sentences[i + 1 :]
        source = {"task": self.name, "article": article_id, "passage": p, "sentence": i, "kept": kept}
        return Pair(sentences[i], _document(article, " ".join(rest), self.doc_title), source)


class BodyFirstSelection(PretrainTask):
    name = "bfs"

    def __init__(self, exclude_query_passage: bool = True, doc_title: bool = True) -> None:
        self.exclude_query_passage, self.doc_title = exclude_query_passage, doc_title

    def prepare(self, corpus: LinkedCorpus) -> None:
        self.articles = corpus.articles
        need = 2 if self.exclude_query_passage else 1
        units = [a.id for a in corpus.articles.values() if a.lead and len(a.passages) >= need]
        self.units = _require(units, "bfs", corpus, f"article with a lead and {need}+ passages")

    def sample(self, rng: random.Random) -> Pair:
        article = self.articles[self.units[rng.randrange(len(self.units))]]
        lead = _lead_sentences(article)
        q_passage, query = lead[rng.randrange(len(lead))]
        choices = [i for i in range(len(article.passages)) if not (self.exclude_query_passage and i == q_passage)]
        d = choices[rng.randrange(len(choices))]
        source = {"task": self.name, "article": article.id, "query_passage": q_passage, "passage": d}
        return Pair(query, _document(article, article.passages[d], self.doc_title), source)


class WikiLinkPrediction(PretrainTask):
    name = "wlp"

    def __init__(self, doc_title: bool = True) -> None:
        self.doc_title = doc_title

    def prepare(self, corpus: LinkedCorpus) -> None:
        if not corpus.has_links:
            raise ValueError(
                f"pretrain_task=wlp needs hyperlinks between articles, and corpus {corpus.name!r} has none: "
                "use the Wikispeedia corpus (pretrain_task/corpus=wikispeedia) or another task"
            )
        self.articles = corpus.articles
        inlinks = corpus.inlinks()
        self.sources = {
            target: [s for s in inlinks.get(target, []) if self.articles[s].passages]
            for target, article in corpus.articles.items()
            if article.lead
        }
        self.units = _require([t for t, s in self.sources.items() if s], "wlp", corpus, "linked-to article with a lead")

    def sample(self, rng: random.Random) -> Pair:
        target = self.articles[self.units[rng.randrange(len(self.units))]]
        sources = self.sources[target.id]
        source_article = self.articles[sources[rng.randrange(len(sources))]]
        lead = _lead_sentences(target)
        _, query = lead[rng.randrange(len(lead))]
        d = rng.randrange(len(source_article.passages))
        source = {"task": self.name, "target": target.id, "source": source_article.id, "passage": d}
        return Pair(query, _document(source_article, source_article.passages[d], self.doc_title), source)


class MaskedLanguageModel(PretrainTask):
    """Passages for the masked-language-model loss; ``mask_prob`` of their tokens are masked (BERT's 80/10/10)."""

    name = "mlm"
    masked_lm = True

    def __init__(self, mask_prob: float = 0.15) -> None:
        if not 0 < mask_prob < 1:
            raise ValueError(f"pretrain_task mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_prob = mask_prob

    def prepare(self, corpus: LinkedCorpus) -> None:
        self.articles = corpus.articles
        units = [(a.id, i) for a in corpus.articles.values() for i in range(len(a.passages))]
        self.units = _require(units, "mlm", corpus, "passage")

    def sample(self, rng: random.Random) -> MaskedText:
        article_id, p = self.units[rng.randrange(len(self.units))]
        return MaskedText(self.articles[article_id].passages[p], {"task": self.name, "article": article_id})


class RetroMAE(MaskedLanguageModel):
    """Passages for RetroMAE (``pretrain/retromae.py``): the encoder reads them whole-word-masked at
    ``encoder_mask``, a one-layer decoder rebuilds them at ``decoder_mask`` from the sentence embedding alone."""

    name = "retromae"

    def __init__(self, encoder_mask: float = 0.3, decoder_mask: float = 0.5, enhanced_decoding: bool = True,
                 sentence_pooling: str = "cls") -> None:  # fmt: skip
        for key, value in (("encoder_mask", encoder_mask), ("decoder_mask", decoder_mask)):
            if not 0 < value < 1:
                raise ValueError(f"pretrain_task.{key} must be in (0, 1), got {value}")
        if sentence_pooling not in ("cls", "mean"):
            raise ValueError(f"pretrain_task.sentence_pooling must be cls or mean, got {sentence_pooling!r}")
        self.encoder_mask, self.decoder_mask = encoder_mask, decoder_mask
        self.enhanced_decoding, self.sentence_pooling = enhanced_decoding, sentence_pooling


@dataclass(frozen=True)
class CropSource:
    """A document to crop (``RandomCropping``); the stream's cropper tokenizes and crops it."""

    text: str
    group: str  # the document's key: two crops of one document are never each other's negatives
    source: dict = field(default_factory=dict)


class RandomCropping(PretrainTask):
    """Contriever's pairs (Izacard et al., 2021): two independent random crops of one window of a document.

    ``sample`` draws an article (its passages joined); the stream's ``Cropper`` (``pretrain/cropping.py``) cuts a
    window of ``chunk_length`` tokens at a random offset, then two crops of ``U(ratio_min, ratio_max)`` of the
    window each, then deletes each token with ``delete_prob``.
    """

    name = "cropping"

    def __init__(self, chunk_length: int = 256, ratio_min: float = 0.1, ratio_max: float = 0.5,
                 delete_prob: float = 0.1) -> None:  # fmt: skip
        if chunk_length < 2:
            raise ValueError(f"pretrain_task.chunk_length must be >= 2, got {chunk_length}")
        if not 0 < ratio_min <= ratio_max <= 1:
            raise ValueError(f"pretrain_task ratios must satisfy 0 < ratio_min <= ratio_max <= 1, got "
                             f"{ratio_min}, {ratio_max}")  # fmt: skip
        if not 0 <= delete_prob < 1:
            raise ValueError(f"pretrain_task.delete_prob must be in [0, 1), got {delete_prob}")
        self.chunk_length, self.ratio_min, self.ratio_max = chunk_length, ratio_min, ratio_max
        self.delete_prob = delete_prob

    def prepare(self, corpus: LinkedCorpus) -> None:
        self.articles = corpus.articles
        self.units = _require([a.id for a in corpus.articles.values() if a.passages], "cropping", corpus, "passage")

    def sample(self, rng: random.Random) -> CropSource:
        article = self.articles[self.units[rng.randrange(len(self.units))]]
        return CropSource(
            " ".join(article.passages), f"article:{article.id}", {"task": self.name, "article": article.id}
        )


def subtasks(task: PretrainTask | Mix) -> list[PretrainTask]:
    """The tasks a stream can draw: the task itself, or a mix's tasks with a weight above 0."""
    if isinstance(task, Mix):
        return [t for t, w in zip(task.tasks.values(), task.weights, strict=True) if w > 0]
    return [task]


class Mix:
    """Several tasks in one stream: the data module draws the task of each global batch with ``choose``,
    uniformly or by ``weights`` (name -> weight). Whole batches share a task, so MLM batches and pair batches
    never mix and every rank of a DDP run agrees on the batch's shape.
    """

    def __init__(self, tasks: Mapping[str, PretrainTask], weights: Mapping[str, float] | None = None) -> None:
        if not tasks:
            raise ValueError("pretrain_task=mix needs at least one task")
        weights = dict(weights or {name: 1.0 for name in tasks})
        unknown = sorted(set(weights) - set(tasks))
        if unknown or any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError(f"mix weights must be >= 0 over the tasks {sorted(tasks)} and not all 0, got {weights}")
        self.tasks = dict(tasks)
        self.names = list(self.tasks)
        self.weights = [float(weights.get(name, 0.0)) for name in self.names]
        self.name = "+".join(n for n, w in zip(self.names, self.weights, strict=True) if w > 0)
        self.masked_lm = any(t.masked_lm for t in self.tasks.values())

    def prepare(self, corpus: LinkedCorpus) -> None:
        for name, weight in zip(self.names, self.weights, strict=True):
            if weight > 0:
                self.tasks[name].prepare(corpus)

    def choose(self, rng: random.Random) -> PretrainTask:
        return self.tasks[rng.choices(self.names, weights=self.weights)[0]]
