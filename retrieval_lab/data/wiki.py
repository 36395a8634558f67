"""Linked-document corpora for pre-training: articles with a title, sections (the first is the lead), passages
and outgoing links. Readers: Wikispeedia (Wikipedia for Schools 2007 with its link graph) and a BEIR corpus (one
passage per document, no links) here, SQuAD articles (no links) in ``data/squad.py``.

Decisions on messy input (tested in ``tests/test_pretrain.py``):

- A malformed JSON line, a line without ``article`` or ``text``, an article whose text is empty and a duplicate
  article name are errors naming the file and line.
- A links row without exactly two tab-separated names, or naming an article that is neither in the articles
  file nor one of the dropped pages, is an error naming the file and line. Links from or to dropped or excluded
  pages are left out; self-links and repeated links are kept once.
- The six non-article pages PROVENANCE.md lists (donation forms, the GFDL text) are dropped by default.
- Wikispeedia text is parsed as: a header (``#copyright``, title, "2007 Schools Wikipedia Selection ..." up to
  the first blank line) is skipped; everything from "Retrieved from" on is a footer and skipped; non-indented
  lines are section headings; indented blocks between blank lines are paragraphs. Image captions ("caption /
  Enlarge / caption") are cut out, and a paragraph is a passage only if it reads as prose (enough words, ends a
  sentence, not an infobox, table or bullet list). An article with text but no prose passage is kept (it can
  still be linked to) and counted in a warning.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from retrieval_lab.data.beir import DataFormatError, parse_json_line, utf8_lines

log = logging.getLogger(__name__)

WIKISPEEDIA_NON_ARTICLES = (
    "Directdebit", "Donation", "Friend_Directdebit", "Sponsorship_Directdebit", "Wowpurchase",
    "Wikipedia_Text_of_the_GNU_Free_Documentation_License",
)  # fmt: skip
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
_COLUMNS = re.compile(r"\S {3,}\S")


@dataclass
class Section:
    heading: str  # "" for the lead
    passages: list[str] = field(default_factory=list)


@dataclass
class Article:
    id: str
    title: str
    sections: list[Section]  # sections[0] is the lead (heading ""), possibly without passages
    links: list[str] = field(default_factory=list)  # ids of the articles this one links to

    @property
    def lead(self) -> list[str]:
        return self.sections[0].passages if self.sections else []

    @property
    def passages(self) -> list[str]:
        return [p for section in self.sections for p in section.passages]


@dataclass
class LinkedCorpus:
    """Articles by id; ``has_links`` is False for sources without a link graph (SQuAD)."""

    name: str
    articles: dict[str, Article]
    has_links: bool

    def inlinks(self) -> dict[str, list[str]]:
        """Target id -> the ids of the articles linking to it, in article order."""
        found: dict[str, list[str]] = {}
        for source in self.articles.values():
            for target in source.links:
                found.setdefault(target, []).append(source.id)
        return found


def _drop_captions(lines: list[str]) -> list[str]:
    """Cut "caption / Enlarge / caption" runs (the caption may wrap over a few lines)."""
    out = list(lines)
    while "Enlarge" in out:
        i = out.index("Enlarge")
        width = next((k for k in range(4, 0, -1) if i >= k and out[i - k : i] == out[i + 1 : i + 1 + k]), 1)
        out[max(0, i - width) : i + 1 + width] = []
    return out


def _is_prose(lines: list[str], text: str, min_words: int) -> bool:
    if len(text.split()) < min_words or not _SENTENCE_END.search(text):
        return False
    tabular = sum(bool(_COLUMNS.search(line)) for line in lines)
    bullets = sum(line.startswith(("* ", "- ", "^")) for line in lines)
    return tabular <= len(lines) // 10 and bullets <= len(lines) // 3  # infoboxes align columns with spaces


def _body_lines(text: str) -> list[str]:
    """The lines after the header and before the "Retrieved from" footer."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("2007 Schools Wikipedia Selection")), None)
    if start is None:
        start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "#copyright"), 0)
    else:
        start = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    end = next((i for i in range(start, len(lines)) if lines[i].strip().startswith("Retrieved from")), len(lines))
    return lines[start:end]


def parse_wikispeedia_text(text: str, min_words: int = 8) -> list[Section]:
    """Sections of one Wikispeedia plaintext article, the lead first (see the module docstring).

    >>> raw = "   #copyright\\n\\nAnt\\n\\n2007 Schools Wikipedia Selection. Related subjects: Insects\\n\\n"
    >>> raw += "   Ants are insects. They live in\\n   colonies.\\n\\nBiology\\n\\n   Kingdom:   Animalia\\n"
    >>> raw += "\\n   Ants have six legs and two antennae.\\n   Ant\\n   Enlarge\\n   Ant\\n"
    >>> [(s.heading, s.passages) for s in parse_wikispeedia_text(raw, min_words=3)]
    [('', ['Ants are insects. They live in colonies.']), ('Biology', ['Ants have six legs and two antennae.'])]
    """
    sections = [Section("")]
    block: list[str] = []

    def flush() -> None:
        lines = _drop_captions([line.strip() for line in block if not line.strip().startswith("CAPTION:")])
        joined = " ".join(" ".join(lines).split())
        if lines and _is_prose(lines, joined, min_words):
            sections[-1].passages.append(joined)
        block.clear()

    for line in _body_lines(text):
        if not line.strip():
            flush()
        elif line[0].isspace():
            block.append(line)
        else:
            flush()
            sections.append(Section(" ".join(line.split())))
    flush()
    return [s for i, s in enumerate(sections) if i == 0 or s.passages]


def title_key(title: str) -> str:
    """How titles are compared: URL-unquoted, ``_`` as a space, case-folded.

    >>> title_key("Nikola_Tesla") == title_key("nikola tesla") == title_key("Nikola%5FTesla")
    True
    """
    return " ".join(unquote(title).replace("_", " ").split()).casefold()


def _read_articles(
    path: Path, skip: set[str], excluded_titles: set[str], max_articles: int | None, min_words: int
) -> tuple[dict[str, Article], dict[str, int]]:
    """Kept articles (parsed) and the line of every name in the file (to check the links file against)."""
    articles: dict[str, Article] = {}
    lines: dict[str, int] = {}
    for lineno, raw in utf8_lines(path, gzip.open if path.suffix == ".gz" else open):
        if not raw.strip():
            continue
        row = parse_json_line(raw, path, lineno, "articles")
        if not isinstance(row, dict) or "article" not in row or "text" not in row:
            raise DataFormatError(f"{path}:{lineno}: expected an object with 'article' and 'text' fields")
        name = str(row["article"])
        if name in lines:
            raise DataFormatError(f"{path}:{lineno}: duplicate article {name!r} (first seen on line {lines[name]})")
        lines[name] = lineno
        if not str(row["text"]).strip():
            raise DataFormatError(f"{path}:{lineno}: article {name!r} has no text")
        title = str(row.get("title") or name.replace("_", " "))
        full = max_articles is not None and len(articles) >= max_articles
        if name in skip or title_key(title) in excluded_titles or title_key(name) in excluded_titles or full:
            continue
        articles[name] = Article(name, title, parse_wikispeedia_text(str(row["text"]), min_words))
    return articles, lines


def _read_links(path: Path, known: set[str], kept: dict[str, Article]) -> int:
    """Attach links to ``kept`` articles; names must be ``known`` (kept or deliberately dropped)."""
    count = 0
    seen: set[tuple[str, str]] = set()
    for lineno, raw in utf8_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(f"{path}:{lineno}: expected 2 tab-separated fields (source, target)")
        for name in fields:
            if name not in known:
                raise DataFormatError(f"{path}:{lineno}: unknown article {name!r} (not in the articles file)")
        source, target = fields
        if source in kept and target in kept and source != target and (source, target) not in seen:
            seen.add((source, target))
            kept[source].links.append(target)
            count += 1
    return count


def load_wikispeedia(
    data_root: str | Path,
    folder: str = "wiki/wikispeedia",
    articles_file: str = "plaintext_articles.jsonl.gz",
    links_file: str | None = "links.tsv",
    drop: Iterable[str] = WIKISPEEDIA_NON_ARTICLES,
    exclude_titles: Iterable[str] | None = None,
    max_articles: int | None = None,
    min_passage_words: int = 8,
    exclude_reqa_test: Mapping | None = None,
) -> LinkedCorpus:
    """Read ``<data_root>/<folder>``: the articles JSONL (plain or gzipped) and the link graph.

    ``exclude_titles`` leaves articles out by title (e.g. those of an evaluation set); ``exclude_reqa_test``
    (``{file, test_fraction, split_seed}``, ``data=reqa_squad``'s split; no file: nothing) leaves out every
    article that is one of ReQA SQuAD's test articles, so pre-training never reads a test document;
    ``max_articles`` keeps the first N in file order (quick runs). Titles match after URL-unquoting, ``_`` ->
    space and case folding, on the article's name and its title. Links between left-out articles are dropped
    with them.
    """
    if max_articles is not None and max_articles < 1:
        raise ValueError(f"max_articles must be >= 1 or null, got {max_articles}")
    base = Path(data_root) / folder
    path = base / articles_file
    if not path.exists():
        raise FileNotFoundError(f"{path}: no Wikispeedia articles here; set RETRIEVAL_LAB_DATA or paths.data_root")
    excluded = {title_key(t) for t in exclude_titles or ()}
    reqa, reqa_titles = dict(exclude_reqa_test or {}), set()
    if reqa.get("file"):  # no file: the downstream data is not ReQA SQuAD
        from retrieval_lab.data.squad import reqa_test_titles  # squad.py builds on this module

        reqa_titles = {title_key(t) for t in reqa_test_titles(data_root, **reqa)}
    articles, lines = _read_articles(path, set(drop), excluded | reqa_titles, max_articles, min_passage_words)
    if reqa_titles:
        left_out = sorted(n for n in lines if title_key(n) in reqa_titles)
        log.info("%s: %d ReQA SQuAD test articles left out of pre-training: %s", path, len(left_out), left_out)
    links = _read_links(base / links_file, set(lines), articles) if links_file else 0
    empty = [name for name, a in articles.items() if not a.passages]
    if empty:
        log.warning("%s: %d articles have no prose passage (first: %s)", path, len(empty), empty[:5])
    log.info("Loaded %d Wikispeedia articles, %d links", len(articles), links)
    return LinkedCorpus(name="wikispeedia", articles=articles, has_links=links_file is not None)


def load_beir_corpus(name: str, data_root: str | Path, download: bool = True) -> LinkedCorpus:
    """A BEIR dataset's corpus alone (no queries, no labels) as pre-training passages: each document an article
    with one passage, its title and text (``Document.full_text``). Pre-training on the target dataset's corpus is
    domain adaptation on unlabeled target text (test documents included): say so beside any number it gives."""
    from retrieval_lab.data.beir import read_corpus
    from retrieval_lab.data.download import ensure_beir_dataset

    folder = ensure_beir_dataset(name, Path(data_root) / "beir", download=download)
    articles = {
        doc_id: Article(doc_id, doc.title, [Section("", [doc.full_text()])])
        for doc_id, doc in read_corpus(folder / "corpus.jsonl").items()
        if doc.full_text().strip()
    }
    if not articles:
        raise DataFormatError(f"{folder / 'corpus.jsonl'}: no document with text")
    log.info("Loaded the %s corpus as %d pre-training passages", name, len(articles))
    return LinkedCorpus(name=f"beir-{name}-corpus", articles=articles, has_links=False)
