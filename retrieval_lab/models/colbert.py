"""ColBERT (Khattab & Zaharia, 2020): token vectors from one BERT tower, scored by late interaction (MaxSim).

Queries are ``[CLS] [Q] tokens [SEP]`` padded with ``[MASK]`` to ``query_max_length`` (query augmentation:
the masks are encoded and scored, but not attended to unless ``attend_to_mask_tokens``); documents are
``[CLS] [D] tokens [SEP]``. Every output state goes through a linear projection to ``dim`` and is
L2-normalized; document vectors of punctuation tokens and padding are zeroed, which is how they are masked
(see ``scoring/maxsim.py``).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from retrieval_lab.models.backbone import load_backbone, load_tokenizer
from retrieval_lab.models.base import Batch, Encoder
from retrieval_lab.models.colbert_formats import read_colbert_checkpoint
from retrieval_lab.scoring.maxsim import maxsim_scores

log = logging.getLogger(__name__)
DEFAULTS = {
    "dim": 128,
    "query_max_length": 32,
    "doc_max_length": 180,  # the paper's MS MARCO setting
    "query_marker": "[unused0]",  # BERT vocabularies hold unused tokens; others get the marker added
    "doc_marker": "[unused1]",
    "attend_to_mask_tokens": False,
    "skip_punctuation": True,
    # the projection of a model that has none yet: "random" (nn.Linear's init) or "pca" (the top principal
    # directions of the backbone's document token states, set from training documents when training starts)
    "projection_init": "random",
}
PROJECTION_INITS = ("random", "pca")


class ColBERT(Encoder):
    """Late-interaction encoder over any Hugging Face encoder, or a ColBERT checkpoint in PyLate's, Stanford
    colbert-ir's or the lab's layout (``models/colbert_formats.py``).

    Settings left at None come from the checkpoint where it has them, else from ``DEFAULTS``; its projection is
    loaded unless ``config_overrides`` asks for random init. A model without one gets a new projection
    (``projection_init``) and says so.
    """

    multi_vector = True

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        dim: int | None = None,
        query_max_length: int | None = None,
        doc_max_length: int | None = None,
        query_marker: str | None = None,
        doc_marker: str | None = None,
        attend_to_mask_tokens: bool | None = None,
        skip_punctuation: bool | None = None,
        projection_init: str | None = None,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        given = {k: v for k, v in locals().items() if k in DEFAULTS and v is not None}
        checkpoint = read_colbert_checkpoint(model_name)
        saved = checkpoint.settings if checkpoint is not None else {}
        self.settings = DEFAULTS | {k: v for k, v in saved.items() if k in DEFAULTS} | given
        for key in ("query_max_length", "doc_max_length"):
            if self.settings[key] < 4:
                raise ValueError(f"model.{key} must be at least 4 ([CLS], marker, a token, [SEP])")
        if self.settings["dim"] < 1:
            raise ValueError(f"model.dim must be positive, got {self.settings['dim']}")
        if self.settings["projection_init"] not in PROJECTION_INITS:
            raise ValueError(f"model.projection_init must be one of {PROJECTION_INITS}, got "
                             f"{self.settings['projection_init']!r}")  # fmt: skip
        self.tokenizer = load_tokenizer(model_name)
        self._distinct_pad_token(model_name)
        self.backbone = load_backbone(model_name, config_overrides)
        self.query_marker_id = self._marker_id(self.settings["query_marker"])
        self.doc_marker_id = self._marker_id(self.settings["doc_marker"])
        self.projection = nn.Linear(self.backbone.config.hidden_size, self.settings["dim"], bias=False)
        if self.settings["projection_init"] == "pca" and self.settings["dim"] > self.backbone.config.hidden_size:
            raise ValueError(f"model.projection_init=pca needs model.dim <= the backbone's hidden size "
                             f"{self.backbone.config.hidden_size}, got {self.settings['dim']}")  # fmt: skip
        self.projection_loaded = checkpoint is not None and checkpoint.projection is not None and not config_overrides
        if self.projection_loaded:
            self._load_projection(checkpoint.projection, f"{model_name} ({checkpoint.layout} layout)")
        else:
            log.warning("%s has no ColBERT projection to load: projection.weight (%d x %d) starts from "
                        "projection_init=%s", model_name, self.settings["dim"], self.backbone.config.hidden_size,
                        self.settings["projection_init"])  # fmt: skip
        self.query_max_length = int(self.settings["query_max_length"])
        self.doc_max_length = int(self.settings["doc_max_length"])
        self.attend_to_mask_tokens = bool(self.settings["attend_to_mask_tokens"])
        words = checkpoint.skiplist_words if checkpoint is not None else None
        skip = (
            []
            if not self.settings["skip_punctuation"]
            else self._skiplist_ids(words)
            if words
            else self._punctuation_ids()
        )
        self.register_buffer("skip_ids", torch.tensor(skip, dtype=torch.long), persistent=False)

    def _marker_id(self, marker: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(marker)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            self.tokenizer.add_special_tokens({"additional_special_tokens": [marker]})
            self.backbone.resize_token_embeddings(len(self.tokenizer))
            token_id = self.tokenizer.convert_tokens_to_ids(marker)
        return int(token_id)

    def _distinct_pad_token(self, model_name: str) -> None:
        """PyLate saves tokenizers whose padding token is [MASK]; the lab tells query padding ([MASK], scored) from
        batch padding by id, so it pads with the vocabulary's own [PAD]."""
        tok = self.tokenizer
        if tok.mask_token_id is None or tok.pad_token_id != tok.mask_token_id:
            return
        pad = tok.convert_tokens_to_ids("[PAD]")
        if pad is None or pad == tok.unk_token_id:
            raise ValueError(f"{model_name}: its tokenizer pads with the mask token and has no [PAD] token")
        tok.pad_token = "[PAD]"

    def _load_projection(self, weight: torch.Tensor, source: str) -> None:
        if weight.shape != self.projection.weight.shape:
            raise ValueError(
                f"{source} holds a {tuple(weight.shape)} projection but model.dim={self.settings['dim']} asks for "
                f"{tuple(self.projection.weight.shape)}: leave model.dim at null to use the saved one"
            )
        self.projection.weight.data.copy_(weight)

    def new_parameter_names(self) -> list[str]:
        """Parameters no checkpoint gave values to (the projection of a plain encoder), for
        ``module.new_params_lr_scale``."""
        return [] if self.projection_loaded else ["projection.weight"]

    def init_new_parameters(self, texts: Sequence[str], max_length: int = 128, batch_size: int = 32) -> None:
        """With ``projection_init=pca`` and no saved projection: set the projection's rows to the top ``dim``
        principal directions (orthonormal) of the backbone's last hidden states over ``texts``' document tokens
        (punctuation and padding left out), so the untrained 128-d token vectors keep as much of the backbone's
        token geometry as ``dim`` directions can. A no-op otherwise."""
        if self.projection_loaded or self.settings["projection_init"] != "pca":
            return
        if not texts:
            raise ValueError("model.projection_init=pca needs training documents to take the directions from")
        was_training, device = self.training, self.projection.weight.device
        self.eval()
        states = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize_docs(texts[start : start + batch_size], max_length=max_length)
                ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()
                hidden = self.backbone(input_ids=ids, attention_mask=attention.long()).last_hidden_state  # (B, L, H)
                states.append(hidden[attention & ~torch.isin(ids, self.skip_ids)].float())  # (tokens, H)
            x = torch.cat(states)  # (N, H)
            if x.shape[0] < self.settings["dim"]:
                raise ValueError(f"model.projection_init=pca: {x.shape[0]} token states from {len(texts)} "
                                 f"documents cannot give {self.settings['dim']} directions")  # fmt: skip
            _, _, vh = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False)  # rows: principal directions
            self.projection.weight.copy_(vh[: self.settings["dim"]].to(self.projection.weight.dtype))
        self.train(was_training)

    def _skiplist_ids(self, words: Sequence[str]) -> list[int]:
        """Vocabulary ids of a checkpoint's skiplist tokens (PyLate's ``skiplist_words``)."""
        ids = {self.tokenizer.convert_tokens_to_ids(w) for w in words}
        return sorted(i for i in ids if i is not None and i != self.tokenizer.unk_token_id)

    def skiplist_tokens(self) -> list[str]:
        """The tokens whose document vectors are dropped, as a PyLate ``skiplist_words`` list."""
        return self.tokenizer.convert_ids_to_tokens(self.skip_ids.tolist())

    def _punctuation_ids(self) -> list[int]:
        """Vocabulary ids of the punctuation symbols that tokenize to a single token (ColBERT's skiplist)."""
        ids = set()
        for symbol in string.punctuation:
            pieces = self.tokenizer(symbol, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1 and pieces[0] != self.tokenizer.unk_token_id:
                ids.add(pieces[0])
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def _with_markers(self, texts: Sequence[str], marker_id: int, max_length: int) -> list[list[int]]:
        body = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 3)
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls, marker_id, *ids, sep] for ids in body["input_ids"]]

    def _batch(self, rows: list[list[int]], attention: list[list[int]], padding: bool) -> Batch:
        if not padding:
            return {"input_ids": rows, "attention_mask": attention}
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
        for i, (row, att) in enumerate(zip(rows, attention, strict=True)):
            ids[i, : len(row)], mask[i, : len(att)] = torch.tensor(row), torch.tensor(att)
        return {"input_ids": ids, "attention_mask": mask}

    def tokenize_queries(self, texts: Sequence[str], padding: bool = True, max_length: int | None = None) -> Batch:
        """Always ``max_length`` (default ``query_max_length``) tokens: the [MASK] padding is part of the model."""
        length = max_length or self.query_max_length
        mask_id = self.tokenizer.mask_token_id
        rows = self._with_markers(texts, self.query_marker_id, length)
        rows = [row + [mask_id] * (length - len(row)) for row in rows]
        attention = [self._query_attention(torch.tensor(row)).long().tolist() for row in rows]
        return self._batch(rows, attention, padding)

    def tokenize_docs(self, texts: Sequence[str], padding: bool = True, max_length: int | None = None) -> Batch:
        rows = self._with_markers(texts, self.doc_marker_id, max_length or self.doc_max_length)
        return self._batch(rows, [[1] * len(row) for row in rows], padding)

    def _query_attention(self, ids: torch.Tensor) -> torch.Tensor:
        attention = ids.ne(self.pad_token_id)
        if not self.attend_to_mask_tokens:
            attention &= ids.ne(self.tokenizer.mask_token_id)
        return attention

    def _token_vectors(self, ids: torch.Tensor, attention: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=ids, attention_mask=attention.long()).last_hidden_state  # (B, L, H)
        vectors = F.normalize(self.projection(hidden), dim=-1)  # (B, L, dim)
        return vectors * keep.unsqueeze(-1).to(vectors.dtype)  # (B, L, dim); dropped tokens are zero

    def encode_queries(self, batch: Batch) -> torch.Tensor:
        """``(B, Lq, dim)``: every token counts, the [MASK] padding included (the attention mask is rebuilt
        from the ids, so batches padded by ``index/encode.py`` behave like the tokenizer's)."""
        ids = batch["input_ids"]
        return self._token_vectors(ids, self._query_attention(ids), ids.ne(self.pad_token_id))

    def encode_docs(self, batch: Batch) -> torch.Tensor:
        """``(B, Ld, dim)`` with the vectors of padding and punctuation zeroed."""
        ids, attention = batch["input_ids"], batch["attention_mask"].bool()
        keep = attention & ~torch.isin(ids, self.skip_ids)
        return self._token_vectors(ids, attention, keep)

    def score(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return maxsim_scores(q, d)  # (Bq, Bd); zero vectors are masked out
