"""SQuAD v1.1 as ReQA-style sentence retrieval, and SQuAD articles as a (link-free) pre-training corpus.

ReQA (Ahmad et al., 2019) turns reading comprehension into retrieval: the corpus is every sentence of every
paragraph, the queries are the questions, and a sentence is relevant when it contains an answer span.
Decisions (tested in ``tests/test_reqa.py``):

- Sentences come from ``data/sentences.py``; a document is the sentence followed by its paragraph as context
  (``context=none``: the sentence alone). Document ids are ``<article title>#p<paragraph>s<sentence>``.
- A sentence is relevant if its character span contains an answer's span (every annotated answer counts, so
  a question can have several relevant sentences). An answer that crosses a sentence boundary (the splitter cut
  inside it) marks every sentence it overlaps; how often that happens is logged.
- Only the dev set is available here (``train-v1.1.json`` is not, see PROVENANCE.md), so the 48 articles are
  split by article: the titles, sorted, are shuffled by ``random.Random(f"reqa-split:{split_seed}")`` and the
  first ``round(test_fraction * n)`` are the test articles. No paragraph (hence no question) is in both splits.
  The corpus holds the sentences of all articles (ReQA ranks against the whole corpus); test questions can only
  be answered by test-article sentences.
- ``dev_size`` questions of the train articles, drawn with ``split_seed``, form the dev split (checkpoint
  selection); ``train_fraction`` then keeps the first ``round(fraction * n)`` (at least one) of the rest
  shuffled by ``random.Random(f"reqa-fraction:{seed}")``. Every fraction shares the dev and test questions,
  and with one seed the smaller fractions are subsets of the larger (1% inside 5% inside 80%).
- Broken JSON is an error naming the file and line; a structural problem (missing field, empty question, an
  answer whose text is not at ``answer_start``) is an error naming the file and the JSON path.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from retrieval_lab.data.beir import DataFormatError, Document, RetrievalDataset
from retrieval_lab.data.sentences import sentence_spans
from retrieval_lab.data.wiki import Article, LinkedCorpus, Section

log = logging.getLogger(__name__)
CONTEXTS = ("paragraph", "none")
SPLITS = ("all", "train", "test")


def read_squad(path: str | Path) -> list[dict]:
    """The ``data`` list of a SQuAD v1.1 file, checked: titles, contexts, questions and answer offsets."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no SQuAD file here; set RETRIEVAL_LAB_DATA or paths.data_root")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
    except (ValueError, RecursionError) as err:  # numbers too long to convert, nesting too deep
        raise DataFormatError(f"{path}: malformed JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataFormatError(f"{path}: expected an object with a 'data' list of articles")
    for a, article in enumerate(data["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not article.get("title") or not isinstance(article.get("paragraphs"), list):
            raise DataFormatError(f"{where}: an article needs a 'title' and a 'paragraphs' list")
        for p, para in enumerate(article["paragraphs"]):
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataFormatError(f"{where}.paragraphs[{p}]: paragraph has no 'context' text")
            questions = para.get("qas", [])
            if not isinstance(questions, list):
                raise DataFormatError(f"{where}.paragraphs[{p}]: 'qas' must be a list of questions")
            for q, qa in enumerate(questions):
                _check_question(qa, context, f"{where}.paragraphs[{p}].qas[{q}]")
    return data["data"]


def _check_question(qa: dict, context: str, where: str) -> None:
    if not isinstance(qa, dict) or not qa.get("id") or not str(qa.get("question") or "").strip():
        raise DataFormatError(f"{where}: a question needs an 'id' and non-empty 'question' text")
    answers = qa.get("answers") or []
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise DataFormatError(f"{where} (id {qa['id']}): 'answers' must be a list of objects")
    for answer in answers:
        start, text = answer.get("answer_start"), answer.get("text")
        if (
            not isinstance(start, int)
            or isinstance(start, bool)
            or start < 0
            or not isinstance(text, str)
            or context[start : start + len(text)] != text
        ):
            raise DataFormatError(f"{where} (id {qa['id']}): answer {text!r} is not at answer_start {start}")


def split_articles(titles: list[str], test_fraction: float, split_seed: int) -> tuple[list[str], list[str]]:
    """(train titles, test titles): a seeded shuffle of the sorted titles, the first part is test."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    order = sorted(set(titles))
    random.Random(f"reqa-split:{split_seed}").shuffle(order)
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 1)
    if n_test < 1:
        raise ValueError(f"{len(order)} article(s) cannot be split into train and test")
    test = set(order[:n_test])
    return [t for t in titles if t not in test], [t for t in titles if t in test]


def relevant_sentences(spans: list[tuple[int, int]], start: int, end: int) -> tuple[list[int], bool]:
    """Indices of the sentences whose span contains ``[start, end)``; failing that, those overlapping it.

    Returns the indices and whether the answer crossed a sentence boundary.

    >>> relevant_sentences([(0, 10), (11, 20)], 12, 15)
    ([1], False)
    >>> relevant_sentences([(0, 10), (11, 20)], 8, 13)
    ([0, 1], True)
    """
    inside = [i for i, (s, e) in enumerate(spans) if s <= start and end <= e]
    if inside:
        return inside, False
    return [i for i, (s, e) in enumerate(spans) if s < end and start < e], True


def _fraction(qids: list[str], fraction: float, seed: int) -> list[str]:
    if not 0 < fraction <= 1:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return qids
    order = sorted(qids)
    random.Random(f"reqa-fraction:{seed}").shuffle(order)
    keep = set(order[: max(1, round(fraction * len(qids)))])  # a prefix: with one seed, 1% is inside 5% and 80%
    return [q for q in qids if q in keep]


def build_reqa(
    articles: list[dict],
    test_titles: set[str],
    context: str = "paragraph",
    dev_size: int = 200,
    train_fraction: float = 1.0,
    split_seed: int = 0,
    seed: int = 0,
    name: str = "reqa_squad",
) -> RetrievalDataset:
    """The ReQA dataset of already-read SQuAD ``articles``; ``test_titles`` names the test articles."""
    if context not in CONTEXTS:
        raise ValueError(f"data.context must be one of {CONTEXTS}, got {context!r}")
    corpus: dict[str, Document] = {}
    queries: dict[str, str] = {}
    judged: dict[str, dict[str, int]] = {}
    train_qids, test_qids, crossing = [], [], 0
    for article in articles:
        title = article["title"]
        for p, para in enumerate(article["paragraphs"]):
            text = para["context"]
            spans = sentence_spans(text)
            ids = [f"{title}#p{p}s{s}" for s in range(len(spans))]
            for did, (s, e) in zip(ids, spans, strict=True):
                sentence = text[s:e]
                corpus[did] = Document("", f"{sentence}\n\n{text}" if context == "paragraph" else sentence)
            for qa in para.get("qas", []):
                qid = str(qa["id"])
                if qid in queries:
                    raise DataFormatError(f"duplicate question id {qid!r} (article {title!r}, paragraph {p})")
                queries[qid] = qa["question"].strip()
                for answer in qa.get("answers") or []:
                    start = answer["answer_start"]
                    hits, crossed = relevant_sentences(spans, start, start + len(answer["text"]))
                    crossing += crossed
                    judged.setdefault(qid, {}).update({ids[i]: 1 for i in hits})
                if qid in judged:
                    (test_qids if title in test_titles else train_qids).append(qid)
    if crossing:
        log.info("%s: %d answers cross a sentence boundary; every sentence they overlap is relevant", name, crossing)
    if dev_size < 0 or dev_size >= len(train_qids):
        raise ValueError(f"data.dev_size must be in [0, {len(train_qids)}) train questions, got {dev_size}")
    dev = set(random.Random(f"reqa-dev:{split_seed}").sample(sorted(train_qids), dev_size))
    train = _fraction([q for q in train_qids if q not in dev], train_fraction, seed)
    qrels = {"train": {q: judged[q] for q in train}, "test": {q: judged[q] for q in test_qids}}
    if dev:
        qrels["dev"] = {q: judged[q] for q in train_qids if q in dev}
    log.info("%s: %d sentences; train %d, dev %d, test %d questions", name, len(corpus), len(train), len(dev),
             len(test_qids))  # fmt: skip
    return RetrievalDataset(name=name, corpus=corpus, queries=queries, qrels=qrels)


def load_reqa_squad(
    data_root: str | Path,
    file: str = "squad/dev-v1.1.json",
    test_fraction: float = 0.5,
    split_seed: int = 0,
    context: str = "paragraph",
    dev_size: int = 200,
    train_fraction: float = 1.0,
    seed: int = 0,
    name: str = "reqa_squad",
    domain: str = "passage",
) -> RetrievalDataset:
    """``data=reqa_squad``: ReQA over ``<data_root>/<file>`` split by article (see the module docstring);
    ``domain`` names a document in LLM prompts."""
    path = Path(data_root) / file
    articles = read_squad(path)
    _, test = split_articles([a["title"] for a in articles], test_fraction, split_seed)
    log.info("%s: test articles (split_seed %d): %s", path, split_seed, sorted(test))
    dataset = build_reqa(articles, set(test), context, dev_size, train_fraction, split_seed, seed, name)
    dataset.domain = domain
    return dataset


def reqa_test_titles(
    data_root: str | Path, file: str = "squad/dev-v1.1.json", test_fraction: float = 0.5, split_seed: int = 0
) -> list[str]:
    """The SQuAD titles ``data=reqa_squad`` tests on (the same article split), e.g. to keep them out of a
    pre-training corpus."""
    articles = read_squad(Path(data_root) / file)
    return split_articles([a["title"] for a in articles], test_fraction, split_seed)[1]


def load_squad_articles(
    data_root: str | Path,
    file: str = "squad/dev-v1.1.json",
    split: str = "train",
    test_fraction: float = 0.5,
    split_seed: int = 0,
) -> LinkedCorpus:
    """SQuAD articles as a pre-training corpus without links: the first paragraph is the lead, the rest one
    body section. ``split`` (all, train, test) uses ``load_reqa_squad``'s article split, so pre-training on
    ``train`` never reads a test paragraph.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    articles = read_squad(Path(data_root) / file)
    train, test = split_articles([a["title"] for a in articles], test_fraction, split_seed)
    keep = {"all": train + test, "train": train, "test": test}[split]
    out: dict[str, Article] = {}
    for article in articles:
        if article["title"] in keep:
            passages = [" ".join(p["context"].split()) for p in article["paragraphs"]]
            sections = [Section("", passages[:1]), Section("Body", passages[1:])]
            out[article["title"]] = Article(article["title"], article["title"].replace("_", " "), sections)
    return LinkedCorpus(name=f"squad-articles-{split}", articles=out, has_links=False)
