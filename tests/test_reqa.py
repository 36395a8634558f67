"""ReQA SQuAD: relevance is exactly the sentences holding an answer span, the split shares no article, the seeded
train fractions; malformed files; and the pre-training ablation's arms end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval_lab.data.beir import DataFormatError
from retrieval_lab.data.squad import build_reqa, load_reqa_squad, load_squad_articles, read_squad, split_articles
from retrieval_lab.main import train
from retrieval_lab.pretrain.stage import pretrain_key
from retrieval_lab.pretrain.tasks import WikiLinkPrediction
from tests.conftest import FAST_TRAIN_OVERRIDES
from tests.test_pretrain import TINY, TINY_WIKI, write_wiki

ALPHA = "Alpha is a city in Spain. It was founded in 1200 by Dr. Smith. The river Beta flows through it."
ALPHA_QUESTIONS = [  # (id, question, answer texts, the sentences that must be relevant)
    ("a1", "When was Alpha founded?", ["1200"], {1}),
    ("a2", "Where is Alpha?", ["Spain", "a city in Spain"], {0}),
    ("a3", "Who or what is in Alpha?", ["Dr. Smith", "The river Beta"], {1, 2}),  # two answers, two sentences
    ("a4", "What ends the first sentence?", ["Spain. It was"], {0, 1}),  # crosses a sentence boundary
]


def _qa(qid: str, question: str, context: str, answers: list[str]) -> dict:
    return {"id": qid, "question": question,
            "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}  # fmt: skip


def squad_articles(n: int = 10) -> list[dict]:
    """Alpha (handmade relevance) and ``n`` generated articles of two paragraphs, two questions each."""
    articles = [{"title": "Alpha", "paragraphs": [{"context": ALPHA, "qas": [
        _qa(qid, q, ALPHA, answers) for qid, q, answers, _ in ALPHA_QUESTIONS]}]}]  # fmt: skip
    for i in range(n):
        paragraphs = []
        for p in range(2):
            context = f"Town{i} has {p + 3} bridges. Its mayor in year {1900 + p} was Mayor{i}x{p}. It rains often."
            qas = [
                _qa(f"t{i}p{p}a", f"How many bridges has Town{i}?", context, [f"{p + 3} bridges"]),
                _qa(f"t{i}p{p}b", f"Who was mayor of Town{i} in {1900 + p}?", context, [f"Mayor{i}x{p}"]),
            ]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Town_{i}", "paragraphs": paragraphs})
    return articles


def write_squad(root: Path, articles: list[dict] | None = None, text: str | None = None) -> Path:
    path = root / "squad" / "dev-v1.1.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps({"version": "1.1", "data": articles or squad_articles()},
                                                             indent=1))  # fmt: skip
    return root


def test_relevant_sentences_are_exactly_those_holding_an_answer():
    dataset = build_reqa(squad_articles(), test_titles={"Alpha"}, dev_size=0)
    sentences = [dataset.corpus[f"Alpha#p0s{i}"].text.split("\n\n")[0] for i in range(3)]
    assert sentences == ["Alpha is a city in Spain.", "It was founded in 1200 by Dr. Smith.",
                         "The river Beta flows through it."]  # fmt: skip
    assert dataset.corpus["Alpha#p0s1"].text == f"{sentences[1]}\n\n{ALPHA}"  # the paragraph as context
    for qid, question, _, relevant in ALPHA_QUESTIONS:
        assert dataset.queries[qid] == question
        assert dataset.qrels["test"][qid] == {f"Alpha#p0s{i}": 1 for i in relevant}
    bare = build_reqa(squad_articles(), test_titles={"Alpha"}, dev_size=0, context="none")
    assert bare.corpus["Alpha#p0s2"].text == sentences[2]


def test_split_is_by_article_seeded_and_shares_nothing():
    titles = [a["title"] for a in squad_articles()]
    train_titles, test_titles = split_articles(titles, 0.5, split_seed=3)
    assert split_articles(titles, 0.5, split_seed=3) == (train_titles, test_titles)
    assert split_articles(titles, 0.5, split_seed=4) != (train_titles, test_titles)
    assert not set(train_titles) & set(test_titles) and sorted(train_titles + test_titles) == sorted(titles)
    assert len(test_titles) == round(0.5 * len(titles))
    dataset = build_reqa(squad_articles(), set(test_titles), dev_size=3)

    def paragraphs(split: str) -> set[str]:
        return {d.split("s")[0] for docs in dataset.qrels[split].values() for d in docs if "#" in d}

    train_side = paragraphs("train") | paragraphs("dev")
    assert train_side and paragraphs("test") and not train_side & paragraphs("test")
    assert {p.split("#")[0] for p in paragraphs("test")} <= set(test_titles)
    assert len(dataset.qrels["dev"]) == 3 and not set(dataset.qrels["dev"]) & set(dataset.qrels["train"])


def test_train_fractions_are_seeded_nested_and_share_dev_and_test():
    def build(fraction: float, seed: int = 0):
        return build_reqa(squad_articles(40), {"Alpha", "Town_0", "Town_1"}, dev_size=10, train_fraction=fraction,
                          seed=seed)  # fmt: skip

    full, five, one = build(1.0), build(0.05), build(0.01)
    pool = len(full.qrels["train"])
    assert len(five.qrels["train"]) == round(0.05 * pool) and len(one.qrels["train"]) == 1  # at least one
    assert set(one.qrels["train"]) <= set(five.qrels["train"]) <= set(full.qrels["train"])
    assert five.qrels["dev"] == full.qrels["dev"] and five.qrels["test"] == full.qrels["test"]
    assert build(0.05).qrels == five.qrels and build(0.05, seed=1).qrels["train"] != five.qrels["train"]
    with pytest.raises(ValueError, match="train_fraction"):
        build(0.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"version": "1.1",\n "data": [\n  {"title": oops}]}', r"dev-v1.1.json:3: malformed JSON"),
        (json.dumps({"data": [{"title": "A", "paragraphs": [{"context": "Hi there.", "qas": [
            {"id": "q", "question": "Who?", "answers": [{"text": "there", "answer_start": 0}]}]}]}]}),
         r"data\[0\].paragraphs\[0\].qas\[0\] \(id q\): answer 'there' is not at answer_start 0"),
        (json.dumps({"data": [{"title": "A", "paragraphs": [{"context": " "}]}]}), r"data\[0\].paragraphs\[0\]: .*no"),
    ],
)  # fmt: skip
def test_malformed_squad_is_an_error_naming_file_and_place(tmp_path, text, message):
    root = write_squad(tmp_path, text=text)
    with pytest.raises(DataFormatError, match=message):
        read_squad(root / "squad" / "dev-v1.1.json")


def test_squad_articles_corpus_has_no_links_and_keeps_to_its_split(tmp_path):
    root = write_squad(tmp_path)
    train_corpus = load_squad_articles(root, split="train", split_seed=0)
    test_corpus = load_squad_articles(root, split="test", split_seed=0)
    assert not set(train_corpus.articles) & set(test_corpus.articles)
    _, test_titles = split_articles([a["title"] for a in squad_articles()], 0.5, 0)
    assert set(test_corpus.articles) == set(test_titles)
    article = next(iter(train_corpus.articles.values()))
    assert len(article.lead) == 1 and len(article.passages) >= 1
    with pytest.raises(ValueError, match="wlp needs hyperlinks"):
        WikiLinkPrediction().prepare(train_corpus)


def test_real_reqa_squad(shared_data):
    dataset = load_reqa_squad(shared_data, train_fraction=0.05)
    articles = read_squad(shared_data / "squad" / "dev-v1.1.json")
    _, test_titles = split_articles([a["title"] for a in articles], 0.5, 0)
    assert len(articles) == 48 and len(test_titles) == 24
    for split, docs in dataset.qrels.items():
        titles = {d.split("#")[0] for rel in docs.values() for d in rel}
        assert (titles <= set(test_titles)) if split == "test" else not titles & set(test_titles)
    answers = {qa["id"]: [a["text"] for a in qa["answers"]] for a in articles for p in a["paragraphs"]
               for qa in p["qas"]}  # fmt: skip
    full = load_reqa_squad(shared_data, dev_size=200)
    assert sum(len(q) for q in full.qrels.values()) == len(answers) == 10570
    for qid, rel in full.qrels["test"].items():  # each question's relevant sentences hold one of its answers
        sentences = [full.corpus[d].text.split("\n\n")[0] for d in rel]
        assert any(a in s for a in answers[qid] for s in sentences) or len(rel) > 1


@pytest.mark.parametrize("arm", ["ict", "mix"])  # every arm reads pretrain_task/corpus=wikispeedia
def test_pretraining_corpus_holds_no_reqa_test_article_unless_asked(compose_cfg, shared_data, arm):
    from hydra.utils import instantiate

    from retrieval_lab.data.wiki import title_key

    overrides = ["experiment=pretrain_ablation", f"+experiment/pretrain_arm={arm}", "data=reqa_squad"]
    cfg = compose_cfg(overrides, data_root=shared_data)
    articles = read_squad(shared_data / "squad" / "dev-v1.1.json")
    test_titles = {title_key(t) for t in split_articles([a["title"] for a in articles], 0.5, 0)[1]}
    corpus = instantiate(cfg.pretrain_task.corpus)
    names = {title_key(n) for n in corpus.articles} | {title_key(a.title) for a in corpus.articles.values()}
    assert not names & test_titles, sorted(names & test_titles)
    if arm == "ict":  # the paper's protocol keeps them: the 8 test articles Wikispeedia has
        kept = instantiate(compose_cfg([*overrides, "pretrain_task.corpus.exclude_reqa_test=null"],
                                       data_root=shared_data).pretrain_task.corpus)  # fmt: skip
        assert (
            len({title_key(n) for n in kept.articles} & test_titles) == 8 == len(kept.articles) - len(corpus.articles)
        )


# --- the ablation's arms on tiny data ----------------------------------------------------------------------------

FINE_TUNE = [o for o in FAST_TRAIN_OVERRIDES if "config_overrides" not in o and o not in (
    "negatives=random", "trainer.max_epochs=2", "trainer.max_steps=-1")] + [
    *TINY, "trainer.max_steps=4", "data.dev_size=4", "pretrain_steps=2"]  # fmt: skip


def _arm_overrides(arm: str, cache: Path, fraction: float) -> list[str]:
    stage = [f"pretrain_task.corpus.{k}={v}" for k, v in TINY_WIKI.items() if k != "drop"] + [
        "pretrain_task.corpus.drop=[Donation]",
        "pretrain_task.batch_size=4",
        f"pretrain_task.cache_dir={cache}",
    ]
    pretrains = arm not in ("bm25", "none", "bow_mlp")
    tiny = [] if arm.startswith("bow") else TINY
    base = [o for o in FINE_TUNE if o not in TINY and not (arm == "bm25" and o.startswith("task."))] + tiny
    return ["experiment=pretrain_ablation", f"+experiment/pretrain_arm={arm}", "data=reqa_squad",
            f"data.train_fraction={fraction}",
            *base, *(stage if pretrains else [])]  # fmt: skip


@pytest.fixture
def reqa_root(tmp_path: Path) -> Path:
    return write_squad(write_wiki(tmp_path / "data"))


@pytest.mark.parametrize("arm", ["bm25", "none", "bow_mlp_mix", "mix", "retromae", "cropping_moco"])
def test_ablation_arms_run_on_tiny_data(compose_cfg, reqa_root, tmp_path, arm):
    cfg = compose_cfg(_arm_overrides(arm, tmp_path / "cache", 0.5), data_root=reqa_root)
    metrics = train(cfg)["test"]
    assert set(metrics) == {"success@1", "success@5", "success@10", "success@50", "success@100",
                            "recall@1", "recall@5", "recall@100", "mrr@100"}  # fmt: skip
    assert all(metrics[f"recall@{k}"] <= metrics[f"success@{k}"] for k in (1, 5, 100))
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@100"]


def test_fractions_of_one_pretraining_share_the_cached_stage(compose_cfg, reqa_root, tmp_path):
    cache = tmp_path / "cache"
    for fraction in (0.5, 1.0):
        train(compose_cfg(_arm_overrides("ict", cache, fraction), data_root=reqa_root))
    stages = list(cache.iterdir())
    assert len(stages) == 1 and (stages[0] / "encoder.pt").exists()
    assert json.loads((stages[0] / "pretrain.json").read_text())["steps"] == 2
    other = compose_cfg(_arm_overrides("wlp", cache, 0.5), data_root=reqa_root)
    assert not (stages[0].name.endswith(pretrain_key(other)))  # another task, another stage


ARMS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf/experiment/pretrain_arm").glob("*.yaml"))


@pytest.mark.parametrize("arm", ARMS)
def test_every_ablation_arm_composes(compose_cfg, arm):
    cfg = compose_cfg(["experiment=pretrain_ablation", f"+experiment/pretrain_arm={arm}", "data=reqa_squad"])
    stage = cfg.get("pretrain_task")
    assert (stage is None) == (arm in ("bm25", "none", "bow_mlp"))
    assert stage is None or stage.max_steps == cfg.pretrain_steps
    assert cfg.task._target_.endswith("evaluate.run" if arm == "bm25" else "train.run")
    assert cfg.model._target_.endswith("BowMLPEncoder") == arm.startswith("bow_mlp")


def test_ablation_is_one_multirun_over_every_arm_and_two_fractions():
    from omegaconf import OmegaConf

    sweep = OmegaConf.load(Path(__file__).parents[1] / "conf/experiment/pretrain_ablation.yaml")
    assert sweep.hydra.mode == "MULTIRUN"
    assert sorted(sweep.hydra.sweeper.params["+experiment/pretrain_arm"].split(",")) == ARMS
    assert sweep.hydra.sweeper.params["data.train_fraction"].split(",") == ["0.01", "0.05"]


def test_retromae_mask_grid_is_one_multirun_of_distinct_stages(compose_cfg):
    from omegaconf import OmegaConf

    conf = Path(__file__).parents[1] / "conf/experiment"
    params = OmegaConf.load(conf / "retromae_masks.yaml").hydra.sweeper.params
    assert params["pretrain_task.encoder_mask"] == "0.15,0.3" and params["pretrain_task.decoder_mask"] == "0.5,0.7"
    keys = set()
    for enc, dec in ((0.15, 0.5), (0.15, 0.7), (0.3, 0.5), (0.3, 0.7)):  # a cell as the sweep composes it
        cell = [f"+experiment/pretrain_arm={params['+experiment/pretrain_arm']}", "data=reqa_squad",
                f"pretrain_task.encoder_mask={enc}", f"pretrain_task.decoder_mask={dec}"]  # fmt: skip
        cfg = compose_cfg(["experiment=retromae_masks", *cell])
        generator = cfg.pretrain_task.generator
        assert (generator.encoder_mask, generator.decoder_mask) == (enc, dec) and generator.enhanced_decoding
        assert cfg.pretrain_task.max_steps == cfg.pretrain_steps and cfg.data.train_fraction == 0.05
        keys.add(pretrain_key(cfg))
    assert len(keys) == 4  # each cell pre-trains its own stage


@pytest.mark.parametrize("task", ["train", "evaluate"])
def test_default_recipe_on_reqa_runs_on_tiny_data(compose_cfg, reqa_root, task):
    overrides = ["experiment=reqa_squad_dpr", "data=reqa_squad", "data.dev_size=4", *TINY]
    if task == "train":
        overrides += [o for o in FAST_TRAIN_OVERRIDES if "config_overrides" not in o] + ["trainer.max_epochs=1"]
    else:
        overrides += ["task=evaluate", "retriever.show_progress=false"]
    metrics = train(compose_cfg(overrides, data_root=reqa_root))
    assert metrics["test"]["success@1"] <= metrics["test"]["success@10"] and "mrr@100" in metrics["test"]
    if task == "train":
        assert metrics["train"]["dev_metric"] == "mrr@100" and metrics["train"]["dev_history"][0][0] == 0


def test_the_stage_cache_key_holds_a_fingerprint_of_the_code(compose_cfg, monkeypatch):
    import retrieval_lab.pretrain.stage as stage

    cfg = compose_cfg(["experiment=pretrain_ablation", "+experiment/pretrain_arm=ict", "data=reqa_squad"])
    before = pretrain_key(cfg)
    monkeypatch.setattr(stage, "code_fingerprint", lambda: "edited-code")
    assert pretrain_key(cfg) != before  # the same settings, other code: another stage
