"""Multi-label tagging: sigmoid scores equal transformers' text-classification pipeline,
thresholds per label (tuned and stored with the model), GoEmotions reading, F1 scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from transformers import pipeline as hf_pipeline

from nlpkit.cli import build_cli
from nlpkit.errors import DataFormatError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.models.files import read_metadata
from nlpkit.tasks.base import Prediction, Record
from nlpkit.tasks.metrics import multilabel_f1
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.multilabel import MultilabelTask
from nlpkit_plugins.multilabel.data import read_multilabel_examples
from nlpkit_plugins.multilabel.thresholds import tune_thresholds

LABELS = ["admiration", "anger", "joy", "sadness"]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TEXTS = ["what a wonderful day", "this is awful and sad", " ".join(["i love this film so much"] * 30)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_distilbert(tmp_path_factory.mktemp("ml") / "tiny-ml", labels=LABELS, seed=9)


def predict(model_dir: Path, texts: list[str], **options) -> list[Prediction]:
    task = MultilabelTask(load_model(str(model_dir), MultilabelTask.model_class), **options)
    return Engine(task).predict([Record({"text": text}) for text in texts])


def test_scores_equal_the_text_classification_pipeline_with_sigmoid(model_dir):
    classify = hf_pipeline("text-classification", model=str(model_dir), device=-1)
    for text, prediction in zip(TEXTS, predict(model_dir, TEXTS), strict=True):
        expected = {r["label"]: r["score"] for r in classify(text, function_to_apply="sigmoid", top_k=None,
                                                               truncation=True)}  # fmt: skip
        assert prediction.output["scores"] == pytest.approx(expected, abs=1e-4)
    assert [p.output["truncated"] for p in predict(model_dir, TEXTS)] == [False, False, True]


def test_labels_are_those_at_or_above_threshold_highest_first(model_dir):
    for prediction in predict(model_dir, TEXTS, threshold=0.3):
        scores = prediction.output["scores"]
        expected = sorted((label for label, score in scores.items() if score >= 0.3), key=scores.get, reverse=True)
        assert prediction.output["labels"] == expected
        assert prediction.label == (expected[0] if expected else None)
    for prediction in predict(model_dir, TEXTS, threshold=0.0, top_k=2):
        assert len(prediction.output["labels"]) == 2


def test_thresholds_stored_with_the_model_are_used(tmp_path):
    path = save_tiny_distilbert(tmp_path / "m", labels=LABELS, seed=9)
    [before] = predict(path, [TEXTS[0]])
    lowest = min(before.output["scores"], key=before.output["scores"].get)
    (path / "nlpkit.json").write_text(json.dumps({"thresholds": {lowest: 0.0}}))
    [after] = predict(path, [TEXTS[0]])
    assert lowest not in before.output["labels"]
    assert lowest in after.output["labels"]


def test_tuning_picks_each_labels_best_f1_threshold():
    rng = np.random.default_rng(0)
    gold = rng.random((400, 2)) < 0.3
    # Label 0 is well separated around 0.2, label 1 around 0.7.
    scores = np.where(gold, [0.25, 0.75], [0.15, 0.65]) + rng.normal(0, 0.01, gold.shape)
    thresholds = tune_thresholds(scores, gold)
    assert 0.15 < thresholds[0] <= 0.25 and 0.65 < thresholds[1] <= 0.75


def test_tune_thresholds_command_saves_them_and_improves_macro_f1(tmp_path, nlpkit_home):
    path = save_tiny_distilbert(tmp_path / "m", labels=LABELS, seed=9)
    data = tmp_path / "dev.jsonl"
    rng = np.random.default_rng(1)
    rows = [{"text": f"review number {i} " + " ".join(rng.choice(["good", "bad", "sad"], 4)),
             "labels": list(rng.choice(LABELS, rng.integers(1, 3), replace=False))} for i in range(60)]  # fmt: skip
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    result = CliRunner().invoke(build_cli(), ["tune-thresholds", "--model", str(path), "--data", str(data)])
    assert result.exit_code == 0, result.output
    thresholds = read_metadata(path)["thresholds"]
    assert set(thresholds) == set(LABELS)
    examples = read_multilabel_examples(data)
    default = MultilabelTask.score(predict(path, [e.record.fields["text"] for e in examples], threshold=0.5), examples)
    tuned = MultilabelTask.score(predict(path, [e.record.fields["text"] for e in examples]), examples)
    assert tuned["macro_f1"] >= default["macro_f1"]


def test_goemotions_tsv_reads_label_names_from_emotions_txt():
    examples = read_multilabel_examples(SHARED / "goemotions" / "dev.tsv")
    assert len(examples) == 5426
    names = (SHARED / "goemotions" / "emotions.txt").read_text().split()
    assert all(set(example.target) <= set(names) for example in examples)
    assert sum(len(example.target) > 1 for example in examples) == 878


def test_labelled_files_and_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine", "labels": ["joy"]}\n{"text": "hm", "labels": "anger, joy"}\n')
    assert [e.target for e in read_multilabel_examples(path)] == [("joy",), ("anger", "joy")]
    path.write_text('{"text": "fine", "labels": [1]}\n')
    with pytest.raises(DataFormatError, match=r"data.jsonl:1: 'labels' must be a list"):
        read_multilabel_examples(path)
    bad = tmp_path / "bad.tsv"
    bad.write_text("some text\tx,y\tabc\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:1: label ids must be integers"):
        read_multilabel_examples(bad)


def test_micro_and_macro_f1():
    predicted = [{"a"}, {"a", "b"}, set()]
    gold = [{"a"}, {"b"}, {"b"}]
    scores = multilabel_f1(predicted, gold, ["a", "b"])
    # a: tp 1, predicted 2, gold 1 -> F1 2/3; b: tp 1, predicted 1, gold 2 -> F1 2/3; c never appears.
    # Pooled: tp 2, predicted 3, gold 3 -> 2/3.
    assert scores["macro_f1"] == pytest.approx(2 / 3)
    assert scores["micro_f1"] == pytest.approx(2 / 3)
    with_absent_label = multilabel_f1(predicted, gold, ["a", "b", "c"])
    assert with_absent_label["macro_f1"] == pytest.approx(4 / 9)
