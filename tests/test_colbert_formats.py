"""ColBERT checkpoints in the layouts researchers publish: PyLate's (which the lab exports), Stanford colbert-ir's,
and the lab's older one; what the lab would run differently is refused by name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from retrieval_lab.models.backbone import load_backbone, load_tokenizer
from retrieval_lab.models.biencoder import BiEncoder
from retrieval_lab.models.colbert import ColBERT
from retrieval_lab.models.export import export_encoder
from retrieval_lab.models.st_recipe import UnsupportedCheckpointError
from tests.conftest import TINY_BERT

DOCS = ["Smoking causes lung cancer, (mostly).", "Aspirin reduces the risk of heart attack in adults!"]
QUERIES = ["does smoking cause cancer?", "aspirin heart attack"]


@pytest.fixture(scope="module")
def tiny_colbert() -> ColBERT:
    torch.manual_seed(0)
    return ColBERT(config_overrides=TINY_BERT, dim=16, doc_max_length=24, query_max_length=12).eval()


def vectors(model: ColBERT) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_queries(model.tokenize_queries(QUERIES)), model.encode_docs(model.tokenize_docs(DOCS))


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def pylate_folder(root: Path, skiplist: list[str], dense: dict | None = None, **st_config) -> tuple[Path, torch.Tensor]:
    """A folder as PyLate 1.6 saves one (its files, checked against a real save): the markers "[Q] "/"[D] " added
    to the vocabulary, the tokenizer padding with [MASK], a bias-free identity Dense of 8 x 32."""
    torch.manual_seed(3)
    backbone, tokenizer = load_backbone("all-MiniLM-L6-v2", TINY_BERT), load_tokenizer("all-MiniLM-L6-v2")
    tokenizer.add_tokens(["[Q] ", "[D] "])
    backbone.resize_token_embeddings(len(tokenizer))
    tokenizer.pad_token = "[MASK]"
    backbone.save_pretrained(root)
    tokenizer.save_pretrained(root)
    write_json(root / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])  # fmt: skip
    write_json(root / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    write_json(root / "config_sentence_transformers.json", {
        "model_type": "ColBERT", "similarity_fn_name": "MaxSim", "query_prefix": "[Q] ", "document_prefix": "[D] ",
        "query_length": 10, "document_length": 20, "attend_to_expansion_tokens": False, "skiplist_words": skiplist,
        "do_query_expansion": True, **st_config,
    })  # fmt: skip
    write_json(
        root / "1_Dense/config.json",
        {
            "in_features": 32,
            "out_features": 8,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "use_residual": False,
            **(dense or {}),
        },
    )
    weight = torch.randn(8, 32)
    save_file({"linear.weight": weight}, str(root / "1_Dense/model.safetensors"))
    return root, weight


def test_export_is_pylate_layout_and_round_trips(tiny_colbert, tmp_path):
    folder = Path(export_encoder(tiny_colbert, tmp_path / "export")["colbert"])
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer", "pylate.models.Dense.Dense"]
    st = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert (st["query_prefix"], st["document_prefix"], st["query_length"], st["document_length"]) == (
        "[unused0]", "[unused1]", 12, 24)  # fmt: skip
    assert st["similarity_fn_name"] == "MaxSim" and st["do_query_expansion"] and "," in st["skiplist_words"]
    torch.testing.assert_close(load_file(str(folder / "1_Dense/model.safetensors"))["linear.weight"],
                               tiny_colbert.projection.weight.detach())  # fmt: skip
    reloaded = ColBERT(model_name=str(folder)).eval()
    assert reloaded.settings == tiny_colbert.settings and reloaded.new_parameter_names() == []
    assert torch.equal(reloaded.skip_ids, tiny_colbert.skip_ids)
    for mine, theirs in zip(vectors(reloaded), vectors(tiny_colbert), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_pylate_folder_loads_with_its_markers_projection_and_skiplist(tmp_path):
    folder, weight = pylate_folder(tmp_path / "pylate", skiplist=[",", "!"])
    model = ColBERT(model_name=str(folder)).eval()
    tok = model.tokenizer
    assert model.settings["dim"] == 8 and model.query_max_length == 10 and model.doc_max_length == 20
    assert model.new_parameter_names() == [] and torch.equal(model.projection.weight.detach(), weight)
    # [CLS] [Q] tokens [SEP], then [MASK] to 10 tokens: PyLate's query; its [MASK] padding token is not the
    # lab's batch padding (which would drop the masks from the query)
    q = model.tokenize_queries(["aspirin heart attack"])["input_ids"][0].tolist()
    body = tok("aspirin heart attack", add_special_tokens=False)["input_ids"]
    assert q == [tok.cls_token_id, tok.convert_tokens_to_ids("[Q] "), *body, tok.sep_token_id] + [
        tok.mask_token_id] * (10 - 3 - len(body))  # fmt: skip
    assert tok.pad_token_id != tok.mask_token_id
    # Only the checkpoint's skiplist is dropped: "," and "!" but not "(" or "."
    assert sorted(tok.convert_ids_to_tokens(model.skip_ids.tolist())) == ["!", ","]
    batch = model.tokenize_docs(DOCS[:1])
    ids = batch["input_ids"][0]
    assert ids[1] == tok.convert_tokens_to_ids("[D] ")
    with torch.no_grad():
        docs, queries = model.encode_docs(batch)[0], model.encode_queries(model.tokenize_queries(QUERIES))
        hidden = model.backbone(**batch).last_hidden_state[0]
    expected = F.normalize(hidden @ weight.T, dim=-1) * ~torch.isin(ids, model.skip_ids).unsqueeze(-1)
    torch.testing.assert_close(docs, expected)
    assert queries.shape == (2, 10, 8) and bool((queries.norm(dim=-1) > 0.99).all())  # every query token scored


def test_stanford_colbert_ir_folder_loads(tmp_path):
    """An HF_ColBERT checkpoint: the backbone's weights under ``bert.``, ``linear.weight`` beside them, the
    settings in ``artifact.metadata``."""
    torch.manual_seed(4)
    backbone, tokenizer = load_backbone("all-MiniLM-L6-v2", TINY_BERT), load_tokenizer("all-MiniLM-L6-v2")
    folder = tmp_path / "stanford"
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {f"bert.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    weight = torch.randn(12, 32)
    save_file({**state, "linear.weight": weight}, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    write_json(folder / "config.json", {**config, "architectures": ["HF_ColBERT"]})
    write_json(folder / "artifact.metadata", {"query_token_id": "[unused0]", "doc_token_id": "[unused1]",
               "query_maxlen": 16, "doc_maxlen": 30, "dim": 12, "similarity": "cosine",
               "attend_to_mask_tokens": False, "mask_punctuation": True})  # fmt: skip
    model = ColBERT(model_name=str(folder)).eval()
    assert (model.settings["dim"], model.query_max_length, model.doc_max_length) == (12, 16, 30)
    assert torch.equal(model.projection.weight.detach(), weight) and model.new_parameter_names() == []
    for name, value in backbone.state_dict().items():  # the backbone's weights, not a fresh init
        torch.testing.assert_close(model.backbone.state_dict()[name], value)
    write_json(folder / "artifact.metadata", {"similarity": "l2"})
    with pytest.raises(UnsupportedCheckpointError, match="similarity='l2'"):
        ColBERT(model_name=str(folder))


@pytest.mark.parametrize(
    ("dense", "st_config", "match"),
    [
        ({"activation_function": "torch.nn.modules.activation.Tanh"}, {}, "Tanh"),
        ({"bias": True}, {}, "bias=True"),
        ({}, {"do_query_expansion": False}, "do_query_expansion=false"),
        ({}, {"query_prefix": ""}, "empty query_prefix"),
    ],
)
def test_pylate_checkpoints_the_lab_would_run_differently_are_refused(tmp_path, dense, st_config, match):
    folder, _ = pylate_folder(tmp_path / "pylate", skiplist=[","], dense=dense, **st_config)
    with pytest.raises(UnsupportedCheckpointError, match=match):
        ColBERT(model_name=str(folder))


def test_a_pylate_checkpoint_is_not_read_as_a_single_vector_model(tmp_path):
    folder, _ = pylate_folder(tmp_path / "pylate", skiplist=[","])
    with pytest.raises(UnsupportedCheckpointError, match="model=colbert"):
        BiEncoder(model_name=str(folder))


def test_a_model_without_projection_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="retrieval_lab.models.colbert"):
        model = ColBERT(config_overrides=TINY_BERT, dim=16)
    assert model.new_parameter_names() == ["projection.weight"]
    assert "no ColBERT projection to load" in caplog.text and "projection_init=random" in caplog.text


def test_pylate_itself_reads_the_export_and_the_lab_reads_pylate(tiny_colbert, tmp_path):
    """Both directions against the real library, where it is installed (not a lab dependency: PyLate 1.6 pins
    sentence-transformers 5.3; run with it on the path, as docs/colbert.md says)."""
    try:
        from pylate import models
    except ImportError:
        pytest.skip("PyLate is not installed")
    folder = export_encoder(tiny_colbert, tmp_path / "export")["colbert"]
    theirs = models.ColBERT(model_name_or_path=folder, device="cpu")
    q = theirs.encode(QUERIES, is_query=True, convert_to_tensor=False)
    d = theirs.encode(DOCS, is_query=False, convert_to_tensor=False)
    mine_q, mine_d = vectors(tiny_colbert)
    for i in range(len(QUERIES)):
        torch.testing.assert_close(torch.as_tensor(q[i]), mine_q[i], atol=1e-5, rtol=1e-4)
    for i in range(len(DOCS)):
        kept = mine_d[i][mine_d[i].norm(dim=-1) > 0]  # the lab zeroes dropped tokens, PyLate removes them
        torch.testing.assert_close(torch.as_tensor(d[i]), kept, atol=1e-5, rtol=1e-4)
    # The other way: a folder PyLate saved, read by the lab, scores PyLate's vectors.
    theirs.save(str(tmp_path / "saved"))
    lab = ColBERT(model_name=str(tmp_path / "saved")).eval()
    lab_q, _ = vectors(lab)
    for i in range(len(QUERIES)):
        torch.testing.assert_close(torch.as_tensor(q[i]), lab_q[i], atol=1e-5, rtol=1e-4)
