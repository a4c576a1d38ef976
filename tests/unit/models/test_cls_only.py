"""A sequence classifier's last layer computed for [CLS] only: the same logits as transformers' model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nlpkit.bench.variant import ShapeFlops
from nlpkit.inference.loading import load_model
from nlpkit.models.cls_only import compute_first_token_only
from nlpkit.models.files import ModelShape
from nlpkit.testing import save_tiny_distilbert

HEAD = "AutoModelForSequenceClassification"


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    return save_tiny_distilbert(tmp_path / "model", labels=["negative", "neutral", "positive"], n_layers=3, seed=4)


def batch(padded: bool) -> tuple[np.ndarray, np.ndarray]:
    rows = [[2, 40, 41, 42, 3, 0, 0, 0], [2, 50, 51, 52, 53, 54, 55, 3], [2, 60, 3, 0, 0, 0, 0, 0]]
    ids = np.array(rows if padded else [rows[1], rows[1][::-1]], dtype=np.int64)
    return ids, (ids != 0).astype(np.int64)


def reference_logits(path: Path, ids: np.ndarray, mask: np.ndarray, attention: str) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=attention).eval()
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_torch_backend_gives_transformers_logits(classifier: Path, padded: bool, attention: str) -> None:
    ids, mask = batch(padded)
    loaded = load_model(str(classifier), HEAD)
    assert loaded.first_token_only
    expected = reference_logits(classifier, ids, mask, attention)
    assert np.abs(loaded.forward(ids, mask)["logits"] - expected).max() < 1e-5


def test_the_onnx_graph_computes_first_token_only_and_gives_transformers_logits(classifier: Path) -> None:
    ids, mask = batch(padded=True)
    loaded = load_model(str(classifier), HEAD, backend="onnx")
    assert loaded.first_token_only
    expected = reference_logits(classifier, ids, mask, "eager")
    assert np.abs(loaded.forward(ids, mask)["logits"] - expected).max() < 1e-5


def test_training_gets_the_same_gradients(classifier: Path) -> None:
    """Fine-tuning uses it too: the loss reads [CLS] only, so every parameter's gradient is unchanged."""
    ids, mask = (torch.from_numpy(a) for a in batch(padded=True))
    labels = torch.tensor([0, 2, 1])
    gradients = []
    for first_token_only in (False, True):
        model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()  # eval: no dropout draws
        if first_token_only:
            compute_first_token_only(model)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    whole, first = gradients
    assert whole.keys() == first.keys()
    assert all(torch.allclose(whole[name], first[name], atol=1e-6) for name in whole)


def test_training_keeps_dropout_on_the_last_layers_attention(classifier: Path) -> None:
    model = compute_first_token_only(AutoModelForSequenceClassification.from_pretrained(classifier))
    for module in model.modules():  # any other dropout would hide whether this one is there
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.distilbert.transformer.layer[-1].attention.dropout.p = 0.5
    ids, mask = (torch.from_numpy(a) for a in batch(padded=True))
    model.train()
    runs = [model(input_ids=ids, attention_mask=mask).logits for _ in range(2)]
    assert not torch.allclose(*runs)
    model.eval()
    assert torch.allclose(*[model(input_ids=ids, attention_mask=mask).logits for _ in range(2)])


def test_saved_weights_keep_transformers_names(classifier: Path, tmp_path: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(classifier)
    names = list(model.state_dict())
    compute_first_token_only(model)
    assert list(model.state_dict()) == names
    model.save_pretrained(tmp_path / "saved")
    shutil.copy(classifier / "tokenizer.json", tmp_path / "saved")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )


def test_other_heads_are_left_whole(tmp_path: Path) -> None:
    path = save_tiny_distilbert(tmp_path / "ner", head="token-classification", labels=["O", "B-PER", "I-PER"])
    assert not load_model(str(path), "AutoModelForTokenClassification").first_token_only
    with pytest.raises(ValueError, match="does not read the first token only"):
        compute_first_token_only(load_model(str(path), "AutoModelForTokenClassification").model)


def test_the_skipped_work_is_counted_out_of_the_benchmark_flops() -> None:
    flops = ShapeFlops(ModelShape(hidden=384, layers=6, heads=12, ffn=1536, max_positions=512))  # the MiniLM
    for length in (64, 256):  # keys and values for every token (1/6 of the projections), the rest for one
        assert flops.first_token_layer(length) < flops.layer(length) / 5
    assert flops.first_token_layer(1) == flops.layer(1)
