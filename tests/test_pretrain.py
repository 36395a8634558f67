"""Pre-training on a tiny handmade linked corpus: the reader, each task's pairs against its definition, the seeded
stream, MLM masking, malformed input, and the stage end to end (task=pretrain, init_from, the cached stage in a
fine-tuning run of experiment=pretrain_reqa / pretrain_ablation)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from retrieval_lab.data.beir import DataFormatError
from retrieval_lab.data.sentences import split_sentences
from retrieval_lab.data.wiki import LinkedCorpus, load_wikispeedia
from retrieval_lab.main import train
from retrieval_lab.pretrain.data import PretrainStream, StreamSampler
from retrieval_lab.pretrain.mlm import IGNORE, mask_tokens
from retrieval_lab.pretrain.tasks import (
    BodyFirstSelection,
    InverseCloze,
    Mix,
    WikiLinkPrediction,
)
from tests.conftest import TINY_MODEL_OVERRIDES
from tests.helpers import assert_scored_from_its_run

HEADER = "   #copyright\n\n{title}\n\n2007 Schools Wikipedia Selection. Related subjects: Insects and\nanimals\n\n"
FOOTER = '   Retrieved from " http://en.wikipedia.org/wiki/{name}"\n   This reference article is mainly selected.\n'
# name -> (lead paragraphs, {heading: paragraphs}); every sentence is unique across the corpus
ARTICLES = {
    "Ant": (["Ants are social insects. They live in large colonies. Ant nests can hold millions."],
            {"Biology": ["Ants have six legs. Their antennae sense smell and touch.", "Queens lay all the eggs."],
             "Behaviour": ["Ants forage in long trails. Workers carry leaves home. Soldiers guard the nest."]}),
    "Bee": (["Bees are flying insects. They make honey and wax."],
            {"Pollination": ["Bees carry pollen between flowers. Many crops depend on them."]}),
    "Honey": (["Honey is a sweet food. Bees make it from nectar. People have eaten it for ages."],
              {"Uses": ["Honey sweetens tea and bread. It was also used on wounds."]}),
    "Wasp": (["Wasps are insects related to ants. Most wasps are not bees."], {}),
    "Donation": (["Please give money to our charity today."], {}),  # a non-article page, dropped
}  # fmt: skip
LINKS = [("Bee", "Ant"), ("Honey", "Bee"), ("Wasp", "Ant"), ("Ant", "Bee"), ("Ant", "Wasp"), ("Bee", "Donation")]
TINY_WIKI = {"folder": "wiki", "articles_file": "articles.jsonl", "links_file": "links.tsv", "drop": ["Donation"],
             "min_passage_words": 3}  # fmt: skip
TINY = [o.replace("+", "++", 1) for o in TINY_MODEL_OVERRIDES]  # ++: small_transformer already sets them


def _indent(paragraph: str) -> str:
    words, lines, line = paragraph.split(), [], ""
    for word in words:  # hard-wrap at ~40 columns, as the Wikispeedia text wraps at ~75
        if line and len(line) + len(word) > 40:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return "\n".join("   " + x for x in [*lines, line]) + "\n\n"


def article_text(name: str) -> str:
    lead, sections = ARTICLES[name]
    text = HEADER.format(title=name) + "   Kingdom:    Animalia\n   Order:      Hymenoptera\n\n"  # an infobox
    text += "".join(_indent(p) for p in lead)
    text += f"   A {name} on a leaf\n   Enlarge\n   A {name} on a leaf\n\n"  # an image caption
    for heading, paragraphs in sections.items():
        text += f"{heading}\n\n" + "".join(_indent(p) for p in paragraphs)
    return text + FOOTER.format(name=name)


def write_wiki(root: Path, articles: dict | None = None, links=None, extra_lines: list[str] | None = None) -> Path:
    folder = root / "wiki"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"article": n, "title": n, "text": article_text(n)}) for n in (articles or ARTICLES)]
    (folder / "articles.jsonl").write_text("\n".join(rows + (extra_lines or [])) + "\n")
    header = "# The list of all links between articles.\n# FORMAT:   linkSource   linkTarget\n\n"
    (folder / "links.tsv").write_text(header + "".join(f"{s}\t{t}\n" for s, t in (links or LINKS)))
    return root


@pytest.fixture
def wiki_root(tmp_path: Path) -> Path:
    return write_wiki(tmp_path / "data")


@pytest.fixture
def corpus(wiki_root: Path) -> LinkedCorpus:
    return load_wikispeedia(wiki_root, **TINY_WIKI)


def test_reader_keeps_sections_passages_and_links(corpus):
    assert sorted(corpus.articles) == ["Ant", "Bee", "Honey", "Wasp"]  # Donation dropped, with its links
    ant = corpus.articles["Ant"]
    assert ant.title == "Ant" and [s.heading for s in ant.sections] == ["", "Biology", "Behaviour"]
    assert ant.lead == ARTICLES["Ant"][0]  # the infobox, the caption and the header are not passages
    assert ant.passages == ARTICLES["Ant"][0] + [p for ps in ARTICLES["Ant"][1].values() for p in ps]
    assert sorted(ant.links) == ["Bee", "Wasp"] and corpus.articles["Bee"].links == ["Ant"]
    assert sorted(corpus.inlinks()["Ant"]) == ["Bee", "Wasp"]
    assert not any("Retrieved" in p or "Enlarge" in p for a in corpus.articles.values() for p in a.passages)


def _samples(task, corpus, n=300, seed=0):
    task.prepare(corpus)
    rng = random.Random(seed)
    return [task.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("keep", [0.0, 0.5, 1.0])
def test_ict_query_is_absent_from_its_document_unless_kept(corpus, keep):
    pairs = _samples(InverseCloze(keep_query_prob=keep), corpus)
    kept = 0
    for pair in pairs:
        article = corpus.articles[pair.source["article"]]
        sentences = split_sentences(article.passages[pair.source["passage"]])
        assert len(sentences) >= 2 and pair.query == sentences[pair.source["sentence"]]
        assert pair.document.title == article.title
        rest = [s for i, s in enumerate(sentences) if pair.source["kept"] or i != pair.source["sentence"]]
        assert pair.document.text == " ".join(rest)
        assert (pair.query in pair.document.text) == pair.source["kept"]
        kept += pair.source["kept"]
    assert {0.0: kept == 0, 0.5: 0 < kept < len(pairs), 1.0: kept == len(pairs)}[keep]


def test_bfs_queries_come_from_the_lead_and_documents_from_the_same_article(corpus):
    pairs = _samples(BodyFirstSelection(), corpus)
    for pair in pairs:
        article = corpus.articles[pair.source["article"]]
        lead_sentences = [s for p in article.lead for s in split_sentences(p)]
        assert pair.query in lead_sentences
        assert pair.document.text in article.passages and pair.document.title == article.title
        assert pair.document.text != article.passages[pair.source["query_passage"]]  # not the query's own passage
    assert {p.source["article"] for p in pairs} == {"Ant", "Bee", "Honey"}  # Wasp has a lead and nothing else


def test_every_wlp_pair_follows_a_real_link(corpus):
    pairs = _samples(WikiLinkPrediction(), corpus)
    for pair in pairs:
        target, source = corpus.articles[pair.source["target"]], corpus.articles[pair.source["source"]]
        assert target.id in source.links  # source links to target
        assert pair.query in [s for p in target.lead for s in split_sentences(p)]
        assert pair.document.text in source.passages and pair.document.title == source.title
    followed = {(p.source["source"], p.source["target"]) for p in pairs}
    assert followed == {(s, t) for s, t in LINKS if t != "Donation"}  # every link is used, none invented


def test_wlp_on_a_corpus_without_links_is_a_clear_error(wiki_root):
    corpus = load_wikispeedia(wiki_root, **{**TINY_WIKI, "links_file": None})
    assert not corpus.has_links
    with pytest.raises(ValueError, match="wlp needs hyperlinks.*has none"):
        WikiLinkPrediction().prepare(corpus)


def test_mix_draws_tasks_by_weight_and_refuses_bad_weights(corpus):
    mix = Mix({"ict": InverseCloze(), "bfs": BodyFirstSelection()}, weights={"ict": 3, "bfs": 1})
    mix.prepare(corpus)
    rng = random.Random(0)
    names = [mix.choose(rng).name for _ in range(2000)]
    assert 0.70 < names.count("ict") / len(names) < 0.80
    assert Mix({"ict": InverseCloze(), "bfs": BodyFirstSelection()}, {"ict": 1, "bfs": 0}).name == "ict"
    with pytest.raises(ValueError, match="mix weights"):
        Mix({"ict": InverseCloze()}, weights={"wlp": 1})


def test_stream_is_seeded_per_example_and_batches_share_a_task(corpus):
    mix = Mix({"ict": InverseCloze(), "bfs": BodyFirstSelection(), "wlp": WikiLinkPrediction()})
    mix.prepare(corpus)
    stream, again, other = PretrainStream(mix, 20, seed=1), PretrainStream(mix, 20, seed=1), PretrainStream(mix, 20, 2)
    keys = list(StreamSampler(20, 4))
    assert [stream[k] for k in keys] == [again[k] for k in keys]
    assert [stream[k] for k in keys] != [other[k] for k in keys]
    assert len({stream.task_of(0, b).name for b in range(20)}) == 3  # every task drawn, one per batch
    rank1 = list(StreamSampler(20, 4, rank=1, world_size=2))
    assert not set(keys[:4]) & set(rank1[:4]) and {k[1] for k in rank1[:4]} == {0}  # same batch, other slots


def test_mlm_masking_spares_special_tokens_and_masks_about_the_asked_share():
    rng = random.Random(0)
    ids = [101] + [rng.randrange(1000, 2000) for _ in range(3000)] + [102]
    masked, labels = mask_tokens(ids, {101, 102}, 103, 30522, 0.15, rng)
    picked = [i for i, lab in enumerate(labels) if lab != IGNORE]
    assert 0.13 < len(picked) / 3000 < 0.17 and 0 not in picked and len(ids) - 1 not in picked
    assert all(labels[i] == ids[i] for i in picked)
    assert all(masked[i] == ids[i] for i in range(len(ids)) if labels[i] == IGNORE)
    assert 0.75 < sum(masked[i] == 103 for i in picked) / len(picked) < 0.85


@pytest.mark.parametrize(
    ("extra", "links", "message"),
    [
        (["{broken json"], None, r"articles.jsonl:6: malformed JSON"),
        ([json.dumps({"article": "Empty", "title": "Empty", "text": "  \n"})], None, r"articles.jsonl:6: .*no text"),
        ([json.dumps({"article": "Ant", "text": "x"})], None, r"articles.jsonl:6: duplicate article 'Ant'"),
        ([], [*LINKS, ("Ant", "Nowhere")], r"links.tsv:10: unknown article 'Nowhere'"),
    ],
)
def test_malformed_input_names_the_file_and_line(tmp_path, extra, links, message):
    root = write_wiki(tmp_path / "bad", links=links, extra_lines=extra)
    with pytest.raises(DataFormatError, match=message):
        load_wikispeedia(root, **TINY_WIKI)


def test_real_wikispeedia_sample(shared_data):
    corpus = load_wikispeedia(shared_data, max_articles=300)
    assert len(corpus.articles) == 300 and not set(corpus.articles) & {"Directdebit", "Donation"}
    assert all(t in corpus.articles for a in corpus.articles.values() for t in a.links)
    assert sum(bool(a.lead) for a in corpus.articles.values()) > 250 and corpus.inlinks()


# --- the stage end to end, on the tiny corpus and a tiny ReQA set -------------------------------------------------


def _stage_overrides(wiki_root: Path, task: str, cache: Path) -> list[str]:
    corpus = [f"pretrain_task.corpus.{k}={v}" for k, v in TINY_WIKI.items() if k != "drop"]
    return [f"pretrain_task={task}", *corpus, "pretrain_task.corpus.drop=[Donation]", "pretrain_task.max_steps=2",
            "pretrain_task.batch_size=4", "pretrain_task.doc_max_length=32", f"pretrain_task.cache_dir={cache}",
            "model=small_transformer", *TINY, "logger=csv"]  # fmt: skip


@pytest.mark.parametrize("task", ["ict", "mlm", "mix"])
def test_task_pretrain_writes_weights_that_init_from_loads(compose_cfg, wiki_root, tmp_path, task):
    cfg = compose_cfg(["task=pretrain", *_stage_overrides(wiki_root, task, tmp_path / "cache")], data_root=wiki_root)
    summary = train(cfg)["pretrain"]
    assert summary["steps"] == 2 and summary["task"] == cfg.pretrain_task.name
    weights = tmp_path / "out" / "pretrain" / "encoder.pt"
    assert weights.exists() and (tmp_path / "out" / "metrics.json").exists()

    from hydra.utils import instantiate

    from retrieval_lab.pretrain.stage import init_encoder

    fresh = compose_cfg(["model=small_transformer", *TINY, f"init_from={tmp_path / 'out'}"])
    encoder = instantiate(fresh.model)
    init_encoder(fresh, encoder)
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("retriever", ["dense", "hybrid"])
def test_task_evaluate_starts_from_init_from(compose_cfg, wiki_root, tmp_path, caplog, retriever):
    """An evaluation with init_from ranks with those weights (a zero-shot number after pre-training), in a hybrid's
    dense side too; BM25 has no encoder and refuses them instead of evaluating something else."""
    import logging

    from hydra.utils import instantiate

    from retrieval_lab.tasks.evaluate import start_from

    train(compose_cfg(["task=pretrain", *_stage_overrides(wiki_root, "ict", tmp_path / "c")], data_root=wiki_root))
    saved = torch.load(tmp_path / "out" / "pretrain" / "encoder.pt", weights_only=True)
    common = ["task=evaluate", "model=small_transformer", *TINY, "logger=csv", f"init_from={tmp_path / 'out'}"]
    cfg = compose_cfg([*common, f"retriever={retriever}"])
    built = instantiate(cfg.retriever)
    start_from(cfg, built)
    encoder = built.encoder if retriever == "dense" else built.dense.encoder
    assert all(torch.equal(v.cpu(), saved[k]) for k, v in encoder.state_dict().items())
    with caplog.at_level(logging.INFO, logger="retrieval_lab.pretrain.stage"):
        metrics = train(cfg)
    assert "initialised the encoder from" in caplog.text
    assert_scored_from_its_run(tmp_path / "out", metrics)
    bm25 = compose_cfg([*common, "retriever=bm25"])
    with pytest.raises(ValueError, match="no encoder"):
        train(bm25)


def test_init_from_a_training_run_takes_its_dev_chosen_checkpoint(tmp_path, caplog):
    from retrieval_lab.pretrain.stage import _weights_file

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best-step50.ckpt", "best-step100.ckpt", "last.ckpt", "start.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    assert _weights_file(run) == run / "checkpoints" / "last.ckpt" and "unfinished" in caplog.text  # no metrics.json
    chosen = {"train": {"best_checkpoint": "/elsewhere/run/checkpoints/best-step50.ckpt"}}  # the folder moved
    (run / "metrics.json").write_text(json.dumps(chosen))
    assert _weights_file(run) == run / "checkpoints" / "best-step50.ckpt"  # not the last, nor the lexically last
    (run / "metrics.json").write_text(json.dumps({"train": {"best_checkpoint": str(run / "checkpoints/start.ckpt")}}))
    assert _weights_file(run) == run / "checkpoints" / "start.ckpt"  # nothing beat the starting weights
    (run / "checkpoints" / "start.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="start.ckpt"):
        _weights_file(run)


def test_init_from_refuses_weights_of_another_model(compose_cfg, wiki_root, tmp_path):
    train(compose_cfg(["task=pretrain", *_stage_overrides(wiki_root, "ict", tmp_path / "c")], data_root=wiki_root))
    from hydra.utils import instantiate

    from retrieval_lab.pretrain.stage import init_encoder

    other = compose_cfg(["model=bow_mlp", f"init_from={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="do not fit model"):
        init_encoder(other, instantiate(other.model))
    both = compose_cfg(["pretrain_task=ict", f"init_from={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match="not both"):
        init_encoder(both, None)


def test_mlm_needs_a_transformer(compose_cfg, wiki_root, tmp_path):
    overrides = [o for o in _stage_overrides(wiki_root, "mlm", tmp_path / "c") if o not in TINY]
    cfg = compose_cfg(["task=pretrain", *overrides, "model=bow_mlp"], data_root=wiki_root)
    with pytest.raises(ValueError, match="mlm needs a Transformer encoder"):
        train(cfg)
