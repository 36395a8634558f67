"""RetroMAE: whole-word masks, the enhanced decoder's attention masks, the decoder's dependence on the encoder only
through the sentence embedding, a falling loss on a tiny corpus, and the stage end to end (init_from, continuing a
stage with its heads, a BEIR corpus as pre-training text)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from retrieval_lab.data.wiki import load_beir_corpus, load_wikispeedia
from retrieval_lab.main import train
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.pretrain.data import PretrainCollator, PretrainStream, StreamSampler
from retrieval_lab.pretrain.mlm import IGNORE
from retrieval_lab.pretrain.retromae import (
    RetroMAEHead,
    RetroMAEMasker,
    collate_retromae,
    whole_word_masks,
    word_groups,
)
from retrieval_lab.pretrain.stage import HEADS, init_encoder
from retrieval_lab.pretrain.tasks import RetroMAE
from tests.conftest import TINY_BERT, TINY_CORPUS
from tests.test_pretrain import TINY, TINY_WIKI, _stage_overrides, write_wiki

TEXT = ("Ants are social insects that live in large colonies underground. Their nests can hold millions of workers, "
        "and a single queen lays the eggs while soldiers guard the entrances against intruders.")  # fmt: skip


@pytest.fixture
def wiki_root(tmp_path: Path) -> Path:
    return write_wiki(tmp_path / "data")


@pytest.fixture(scope="module")
def encoder() -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder(config_overrides=TINY_BERT, pooling="cls", doc_max_length=64)


def test_whole_word_masks_take_whole_words_at_about_the_ratio():
    word_ids = [None] + [w for w in range(400) for _ in range(1 + w % 3)] + [None]  # words of 1-3 tokens
    token_word, sizes = word_groups(word_ids)
    masks = whole_word_masks(token_word, sizes, 0.3, 50, torch.Generator().manual_seed(0))  # (50, L)
    share = masks.sum(1).float() / int(sizes.sum())
    assert ((share > 0.28) & (share <= 0.3 + 1 / 799)).all()  # round(0.3 x 799) = 240 tokens
    assert not masks[:, 0].any() and not masks[:, -1].any()
    words = token_word[1:-1]
    for row in masks[:, 1:-1]:  # a word is masked whole or not at all
        per_word = torch.zeros(400).index_add_(0, words, row.float())
        assert torch.equal(per_word[per_word > 0], sizes[per_word > 0].float())
    assert len({tuple(m.tolist()) for m in masks}) == 50  # independent draws


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_enhanced_decoding_masks(encoder, ratio):
    masker = RetroMAEMasker(encoder, 64, 0.3, ratio)
    items = [masker(TEXT, random.Random(i)) for i in range(4)] + [masker("Ants dig.", random.Random(9))]
    batch = collate_retromae(items, encoder.pad_token_id)
    visible, mask = batch["decoder_attention"], batch["attention_mask"].bool()  # (B, L, L), (B, L)
    assert visible[:, :, 0].all()  # every row sees the sentence embedding
    for row in range(len(items)):
        n = int(mask[row].sum())
        assert not visible[row, range(1, n), range(1, n)].any()  # no row sees its own token
        assert not visible[row, :, n:].any()  # nor padding
        if n < 20:
            continue  # too few tokens for a share
        hidden = ~visible[row, 1 : n - 1, 1 : n - 1]  # among the passage's own tokens ([CLS] and [SEP] aside)
        share = (hidden.sum() - (n - 2)).item() / ((n - 2) * (n - 3))  # off the diagonal
        assert abs(share - ratio) < 0.12, share
        labels = batch["decoder_labels"][row, :n]
        assert labels[0] == IGNORE and labels[n - 1] == IGNORE  # every other token is predicted
        assert torch.equal(labels[1 : n - 1], batch["input_ids"][row, 1 : n - 1])
    enc = batch["encoder_labels"][mask]
    assert 0.2 < (enc != IGNORE).float().mean() < 0.35  # the encoder's share over [CLS]/[SEP] and short texts


def test_plain_decoding_masks_its_input_and_predicts_the_masked_tokens(encoder):
    item = RetroMAEMasker(encoder, 64, 0.3, 0.5, enhanced_decoding=False)(TEXT, random.Random(0))
    assert "retromae_attention" not in item
    picked = item["retromae_decoder_labels"] != IGNORE
    assert 0.4 < picked[1:-1].float().mean() <= 0.5 + 1 / 35  # round(0.5 x 35 tokens) = 18
    assert torch.equal(item["retromae_decoder_labels"][picked], item["retromae_ids"][picked])
    changed = item["retromae_decoder_ids"] != item["retromae_ids"]
    assert not (changed & ~picked).any() and changed.sum() > 0.7 * picked.sum()  # 80% [MASK] + 10% random


def test_decoder_sees_the_encoder_only_through_the_sentence_embedding(encoder):
    torch.manual_seed(1)
    encoder.eval()  # no dropout in the decoder's token embeddings
    masker = RetroMAEMasker(encoder, 64, 0.3, 0.5)
    batch = collate_retromae([masker(TEXT, random.Random(i)) for i in range(3)], encoder.pad_token_id)
    for enhanced in (True, False):
        if not enhanced:
            plain = RetroMAEMasker(encoder, 64, 0.3, 0.5, enhanced_decoding=False)
            batch = collate_retromae([plain(TEXT, random.Random(i)) for i in range(3)], encoder.pad_token_id)
        head = RetroMAEHead(encoder.doc_tower, enhanced_decoding=enhanced).eval()
        hidden = torch.randn(3, batch["input_ids"].shape[1], TINY_BERT["hidden_size"])
        base = head.decoder_loss(hidden, batch)
        other = hidden.clone()
        other[:, 1:] += torch.randn_like(other[:, 1:])  # every position but the sentence embedding's
        assert torch.equal(head.decoder_loss(other, batch), base)
        hidden.requires_grad_(True)
        (grad,) = torch.autograd.grad(head.decoder_loss(hidden, batch), hidden)  # (3, L, H)
        assert not grad[:, 1:].any() and grad[:, 0].abs().sum(-1).gt(0).all()  # through the sentence embedding


def test_heads_share_one_mlm_head_tied_to_the_word_embeddings(encoder):
    head = RetroMAEHead(encoder.doc_tower)
    names = {n for n, _ in head.named_parameters()}
    assert not any("word_embeddings" in n or n.startswith("_tower") for n in names)  # the encoder owns those
    assert head.mlm_head._embeddings[0] is encoder.doc_tower.get_input_embeddings()


@pytest.mark.parametrize("enhanced", [True, False])
def test_loss_falls_on_a_tiny_corpus(wiki_root, enhanced):
    torch.manual_seed(0)
    corpus = load_wikispeedia(wiki_root, **TINY_WIKI)
    model = BiEncoder(config_overrides=TINY_BERT, pooling="cls", doc_max_length=32)
    task = RetroMAE(enhanced_decoding=enhanced)
    task.prepare(corpus)
    stream = PretrainStream(task, 1, seed=0)
    stream.maskers["retromae"] = RetroMAEMasker(model, 32, 0.3, 0.5, enhanced)
    batch = PretrainCollator(model, 32, 32)([stream[k] for k in StreamSampler(1, 8)])["retromae"]
    head = RetroMAEHead(model.doc_tower, enhanced_decoding=enhanced)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(30):  # one fixed batch: the model must be able to fit it
        loss = torch.stack(head(batch)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::5]


def test_task_validates_its_settings():
    for bad in ({"encoder_mask": 0.0}, {"decoder_mask": 1.0}, {"sentence_pooling": "max"}):
        with pytest.raises(ValueError, match="pretrain_task"):
            RetroMAE(**bad)


def test_stage_writes_encoder_and_heads_continues_and_init_from_loads(compose_cfg, wiki_root, tmp_path):
    first = compose_cfg(["task=pretrain", *_stage_overrides(wiki_root, "retromae", tmp_path / "c")],
                        data_root=wiki_root)  # fmt: skip
    summary = train(first)["pretrain"]
    out = tmp_path / "out" / "pretrain"
    assert summary["task"] == "retromae" and summary["steps"] == 2
    heads = torch.load(out / HEADS, weights_only=True)
    assert any(k.startswith("retromae_heads.0.decoder.") for k in heads) and not any("encoder." in k for k in heads)

    fresh = compose_cfg(["model=small_transformer", *TINY, f"init_from={tmp_path / 'out'}"])
    model = instantiate(fresh.model)
    init_encoder(fresh, model)  # the encoder alone, as any fine-tuning run starts from it
    saved = torch.load(out / "encoder.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())

    (tmp_path / "first").mkdir()
    out.rename(tmp_path / "first" / "pretrain")
    resume = f"pretrain_task.init_from={tmp_path / 'first'}"
    overrides = [*_stage_overrides(wiki_root, "retromae", tmp_path / "c"), resume]
    again = train(compose_cfg(["task=pretrain", *overrides], data_root=wiki_root))["pretrain"]
    assert again["steps"] == 2 and (out / HEADS).exists()

    with pytest.raises(ValueError, match="heads do not fit"):  # an MLM stage's heads cannot continue RetroMAE
        mlm = [*_stage_overrides(wiki_root, "mlm", tmp_path / "c"), resume]
        train(compose_cfg(["task=pretrain", *mlm], data_root=wiki_root))


def test_beir_corpus_as_pretraining_text(tiny_data):
    beir = load_beir_corpus("tiny", tiny_data, download=False)
    assert len(beir.articles) == len(TINY_CORPUS) and not beir.has_links
    title, text = TINY_CORPUS["d1"]
    assert beir.articles["d1"].passages == [f"{title} {text}"]
