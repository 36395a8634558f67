"""RetroMAE (Xiao et al., 2022): a masked auto-encoder that makes a weak decoder rebuild its input from the
encoder's sentence embedding alone.

Per passage (``RetroMAEMasker``, in the data workers): the encoder reads a whole-word-masked copy at
``encoder_mask`` (BERT's 80/10/10) and has an MLM loss; the decoder rebuilds the passage at ``decoder_mask``:

- enhanced decoding (the paper's): a query stream (sentence embedding + position embeddings) attends to a
  key/value stream (embeddings of the *unmasked* passage, position 0 replaced by the sentence embedding) under
  a per-row attention mask drawn from a pool of whole-word masks; a row never sees its own position and always
  sees the sentence embedding; every original token is predicted (``decoder_attention`` below);
- plain decoding (``enhanced_decoding: false``, the paper's ablation): one stream over a whole-word-masked copy
  at ``decoder_mask`` with position 0 replaced by the sentence embedding; the masked tokens are predicted.

``RetroMAEHead`` (one per Transformer tower) holds the one-layer decoder; the MLM head, tied to the word
embeddings, is shared by the encoder's and the decoder's losses. Only the encoder is kept for retrieval.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.biencoder import pool
from retrieval_lab.pretrain.mlm import IGNORE, MaskedLMHead, masked_lm_loss


def word_groups(word_ids: list[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_word, word_sizes)``: each token's word index (-1 for special tokens) and each word's token count.
    Tokens of one word (a fast tokenizer's ``word_ids``) are masked together.

    >>> word_groups([None, 0, 0, 1, None])
    (tensor([-1,  0,  0,  1, -1]), tensor([2, 1]))
    """
    order: dict[int, int] = {}
    token_word = [-1 if w is None else order.setdefault(w, len(order)) for w in word_ids]
    sizes = torch.bincount(torch.tensor([w for w in token_word if w >= 0], dtype=torch.long), minlength=len(order))
    return torch.tensor(token_word, dtype=torch.long), sizes


def whole_word_masks(token_word: torch.Tensor, sizes: torch.Tensor, ratio: float, n: int, g: torch.Generator):
    """``n`` independent whole-word masks (n, L) over the non-special tokens: words in random order are taken while
    the masked token count stays within ``round(ratio * tokens)`` (at least one word), as BERT's whole-word masking.

    >>> tw, sz = word_groups([None, 0, 1, 1, 2, 3, None])
    >>> m = whole_word_masks(tw, sz, 0.5, 4, torch.Generator().manual_seed(0))
    >>> m.shape, bool(m[:, 0].any() or m[:, -1].any()), bool((m[:, 2] == m[:, 3]).all())
    (torch.Size([4, 7]), False, True)
    """
    words = sizes.numel()
    if words == 0:
        return torch.zeros((n, token_word.numel()), dtype=torch.bool)
    target = max(1, round(ratio * int(sizes.sum())))
    perm = torch.rand((n, words), generator=g).argsort(dim=1)  # (n, W): words in the order they are tried
    taken = sizes[perm].cumsum(dim=1) <= target  # (n, W): a prefix of that order
    taken[:, 0] = True  # at least one word, even one longer than the target
    chosen = torch.zeros((n, words), dtype=torch.bool).scatter(1, perm, taken)  # (n, W) by word index
    special = token_word < 0
    return chosen[:, token_word.clamp(min=0)] & ~special  # (n, L)


def corrupt(ids: torch.Tensor, mask: torch.Tensor, mask_id: int, vocab_size: int, g: torch.Generator):
    """BERT's replacement at ``mask``: [MASK] 80%, a random token 10%, unchanged 10%; labels there, else IGNORE."""
    roll = torch.rand(ids.shape, generator=g)
    random_ids = torch.randint(vocab_size, ids.shape, generator=g)
    out = torch.where(mask & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    out = torch.where(mask & (roll >= 0.8) & (roll < 0.9), random_ids, out)
    return out, torch.where(mask, ids, torch.full_like(ids, IGNORE))


def decoder_attention(pool_masks: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Enhanced decoding's (L, L) visibility (True: row may attend to column): row i takes a mask of the pool at
    random and hides those tokens and itself; column 0 (the sentence embedding) is always visible.

    >>> vis = decoder_attention(torch.tensor([[False, True, False, False]]), torch.Generator().manual_seed(0))
    >>> vis.int().tolist()
    [[1, 0, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 0]]
    """
    length = pool_masks.shape[1]
    picks = torch.randint(pool_masks.shape[0], (length,), generator=g)  # (L,)
    visible = ~pool_masks[picks]  # (L, L)
    visible.fill_diagonal_(False)
    visible[:, 0] = True  # row 0 ([CLS], never predicted) sees the sentence embedding only among its choices
    return visible


class RetroMAEMasker:
    """Tokenizes a passage as a document and makes one RetroMAE example (lists and tensors, padded later)."""

    def __init__(self, encoder, max_length: int | None, encoder_mask: float, decoder_mask: float,
                 enhanced_decoding: bool = True, pool_size: int = 256) -> None:  # fmt: skip
        tokenizer = getattr(encoder, "tokenizer", None)
        if tokenizer is None or tokenizer.mask_token_id is None or not getattr(tokenizer, "is_fast", False):
            raise ValueError("pretrain_task=retromae needs a Transformer encoder with a fast tokenizer and a mask "
                             f"token, not {type(encoder).__name__}")  # fmt: skip
        self.tokenize, self.max_length = encoder.tokenize_docs, max_length
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, len(tokenizer)
        self.encoder_mask, self.decoder_mask = encoder_mask, decoder_mask
        self.enhanced, self.pool_size = enhanced_decoding, pool_size

    def __call__(self, text: str, rng: random.Random) -> dict:
        encoded = self.tokenize([text], padding=False, max_length=self.max_length)
        ids = torch.tensor(encoded["input_ids"][0], dtype=torch.long)  # (L,)
        token_word, sizes = word_groups(encoded.word_ids(0))
        g = torch.Generator().manual_seed(rng.getrandbits(63))  # the example's own stream (see pretrain/data.py)
        enc_mask = whole_word_masks(token_word, sizes, self.encoder_mask, 1, g)[0]  # (L,)
        enc_ids, enc_labels = corrupt(ids, enc_mask, self.mask_id, self.vocab_size, g)
        item = {"retromae_ids": ids, "retromae_encoder_ids": enc_ids, "retromae_encoder_labels": enc_labels}
        if self.enhanced:
            pool_masks = whole_word_masks(token_word, sizes, self.decoder_mask, min(len(ids), self.pool_size), g)
            item["retromae_attention"] = decoder_attention(pool_masks, g)  # (L, L)
            item["retromae_decoder_ids"] = ids
            item["retromae_decoder_labels"] = torch.where(token_word >= 0, ids, torch.full_like(ids, IGNORE))
        else:
            dec_mask = whole_word_masks(token_word, sizes, self.decoder_mask, 1, g)[0]  # (L,)
            item["retromae_decoder_ids"], item["retromae_decoder_labels"] = corrupt(
                ids, dec_mask, self.mask_id, self.vocab_size, g
            )
        return item


def collate_retromae(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of ``RetroMAEMasker`` examples; padded rows and columns of the visibility are hidden except
    column 0, so every row has a key to attend to."""
    width = max(len(it["retromae_ids"]) for it in items)
    size = (len(items), width)
    out = {
        "input_ids": torch.full(size, pad_id, dtype=torch.long),  # (B, L)
        "attention_mask": torch.zeros(size, dtype=torch.long),  # (B, L)
        "encoder_ids": torch.full(size, pad_id, dtype=torch.long),  # (B, L)
        "encoder_labels": torch.full(size, IGNORE, dtype=torch.long),  # (B, L)
        "decoder_ids": torch.full(size, pad_id, dtype=torch.long),  # (B, L)
        "decoder_labels": torch.full(size, IGNORE, dtype=torch.long),  # (B, L)
    }
    enhanced = "retromae_attention" in items[0]
    if enhanced:
        out["decoder_attention"] = torch.zeros((len(items), width, width), dtype=torch.bool)  # (B, L, L)
    for row, it in enumerate(items):
        n = len(it["retromae_ids"])
        out["input_ids"][row, :n] = it["retromae_ids"]
        out["attention_mask"][row, :n] = 1
        for key in ("encoder_ids", "encoder_labels", "decoder_ids", "decoder_labels"):
            out[key][row, :n] = it[f"retromae_{key}"]
        if enhanced:
            out["decoder_attention"][row, :n, :n] = it["retromae_attention"]
    if enhanced:
        out["decoder_attention"][:, :, 0] = True
    return out


class DecoderLayer(nn.Module):
    """One post-LayerNorm Transformer layer (BERT's) whose queries may come from another stream than its keys and
    values: attention, residual on the query stream, LayerNorm, feed-forward, residual, LayerNorm."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float, eps: float, init_std: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"decoder: hidden size {hidden} is not a multiple of {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, h = x.shape
        return x.view(b, length, self.heads, h // self.heads).transpose(1, 2)  # (B, heads, L, h/heads)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """query, kv: (B, L, H); visible: (B, L, L) bool, True where row may attend to column."""
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(
            self._split(self.q(query)), self._split(self.k(kv)), self._split(self.v(kv)),
            attn_mask=visible.unsqueeze(1), dropout_p=p,
        )  # (B, heads, L, h/heads)  # fmt: skip
        att = att.transpose(1, 2).reshape(query.shape)  # (B, L, H)
        h = self.norm1(query + F.dropout(self.out(att), p, self.training))  # (B, L, H)
        return self.norm2(h + F.dropout(self.ffn(h), p, self.training))  # (B, L, H)


class RetroMAEHead(nn.Module):
    """The decoder side of RetroMAE for one Hugging Face tower (BERT-style embeddings with absolute positions);
    ``loss`` adds the encoder's MLM loss and the decoder's reconstruction loss through one shared MLM head."""

    def __init__(self, tower: nn.Module, enhanced_decoding: bool = True, sentence_pooling: str = "cls") -> None:
        super().__init__()
        embeddings = getattr(tower, "embeddings", None)
        if embeddings is None or not hasattr(embeddings, "position_embeddings"):
            raise ValueError(f"pretrain_task=retromae needs a BERT-style tower with absolute position embeddings, "
                             f"not {type(tower).__name__}")  # fmt: skip
        cfg = tower.config
        self._tower = [tower]  # a list keeps the tower out of this module's parameters (the encoder owns it)
        self.enhanced, self.sentence_pooling = enhanced_decoding, sentence_pooling
        self.mlm_head = MaskedLMHead(tower.get_input_embeddings(), cfg.layer_norm_eps)
        self.decoder = DecoderLayer(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
                                    cfg.hidden_dropout_prob, cfg.layer_norm_eps, cfg.initializer_range)  # fmt: skip

    def decoder_loss(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reconstruction loss from the encoder's last hidden states ``hidden`` (B, L, H), through the sentence
        embedding only."""
        embeddings = self._tower[0].embeddings
        sentence = pool(hidden, batch["attention_mask"], self.sentence_pooling).unsqueeze(1)  # (B, 1, H)
        tokens = embeddings(input_ids=batch["decoder_ids"])  # (B, L, H): word + position (+ type), normalised
        kv = torch.cat([sentence, tokens[:, 1:]], dim=1)  # (B, L, H)
        if self.enhanced:
            positions = torch.arange(kv.shape[1], device=kv.device)
            query = embeddings.position_embeddings(positions).unsqueeze(0) + sentence  # (B, L, H)
            visible = batch["decoder_attention"]  # (B, L, L)
        else:
            query = kv
            keys = batch["attention_mask"].bool()  # (B, L)
            visible = keys.unsqueeze(1).expand(-1, kv.shape[1], -1)  # (B, L, L)
        decoded = self.decoder(query, kv, visible)  # (B, L, H)
        return masked_lm_loss(decoded, batch["decoder_labels"], self.mlm_head)  # ()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encoder MLM loss, decoder loss)`` for a collated batch (``collate_retromae``)."""
        tower = self._tower[0]
        hidden = tower(input_ids=batch["encoder_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return masked_lm_loss(hidden, batch["encoder_labels"], self.mlm_head), self.decoder_loss(hidden, batch)
