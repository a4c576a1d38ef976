"""The sentiment task: output shape, truncation flag, agreement with transformers, data reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nlpkit.errors import DataFormatError, InvalidRecordError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.tasks.base import Record
from nlpkit_plugins.sentiment import SentimentTask

LONG_TEXT = " ".join(["the film was good but far too long"] * 40)  # far beyond 64 positions


@pytest.fixture
def task(sentiment_model_dir):
    return SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))


def test_output_has_label_score_scores_and_truncated(task):
    [prediction] = Engine(task).predict([Record({"text": "a great movie"})])
    output = prediction.output
    assert set(output) == {"label", "score", "scores", "truncated"}
    assert set(output["scores"]) == {"negative", "positive"}
    assert sum(output["scores"].values()) == pytest.approx(1.0, abs=1e-6)
    assert output["label"] == max(output["scores"], key=output["scores"].get)
    assert output["score"] == output["scores"][output["label"]]
    assert output["truncated"] is False
    assert (prediction.label, prediction.score) == (output["label"], output["score"])
    json.dumps(output)  # stored as JSON: must serialise


def test_long_inputs_are_truncated_and_flagged_not_crashed(task):
    short, long = Engine(task).predict([Record({"text": "good"}), Record({"text": LONG_TEXT})])
    assert short.output["truncated"] is False
    assert long.output["truncated"] is True


def test_scores_match_transformers_on_the_same_truncated_input(task, sentiment_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(sentiment_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(sentiment_model_dir).eval()
    texts = ["a good film", "bad", LONG_TEXT]
    predictions = Engine(task, batch_size=2).predict([Record({"text": t}) for t in texts])
    for text, prediction in zip(texts, predictions, strict=True):
        encoded = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            probabilities = model(**encoded).logits.softmax(-1)[0]
        expected = {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
        assert prediction.output["scores"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "missing field 'text'"),
        ({"text": "   "}, "field 'text' is empty"),
        ({"text": 5}, "field 'text' must be a string, not int"),
    ],
)
def test_validation_gives_reasons(fields, reason):
    with pytest.raises(InvalidRecordError, match=reason):
        SentimentTask.validate(fields)


def test_reads_sst2_tsv_with_either_header_and_imdb_jsonl(tmp_path: Path):
    for header in ("sentence", "text"):
        path = tmp_path / f"{header}.tsv"
        path.write_text(f'{header}\tlabel\nit \'s a " charming " film \t1\nawful \t0\n', encoding="utf-8")
        examples = SentimentTask.read_examples(path)
        assert [e.target for e in examples] == ["positive", "negative"]
        assert examples[0].record.fields["text"] == 'it \'s a " charming " film '
    jsonl = tmp_path / "imdb.jsonl"
    jsonl.write_text('{"id": 1, "label": 0, "text": "dull"}\n{"id": 2, "label": 1, "text": "fun"}\n')
    assert [e.target for e in SentimentTask.read_examples(jsonl)] == ["negative", "positive"]
    assert SentimentTask.label_names(SentimentTask.read_examples(jsonl)) == ["negative", "positive"]


def test_bad_data_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{"text": "no label"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: no 'label' column"):
        SentimentTask.read_examples(path)
    path.write_text('{"text": "ok", "label": 1}\nnot json\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: invalid JSON"):
        SentimentTask.read_examples(path)
