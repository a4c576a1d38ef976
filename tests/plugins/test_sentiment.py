"""The sentiment task: output shape, truncation flag, windows over long texts, agreement with transformers,
data reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nlpkit.errors import DataFormatError, InvalidRecordError, NlpkitError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.models.files import write_metadata
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


def test_a_window_reads_long_texts_whole_and_averages_the_windows_logits(sentiment_model_dir):
    """What the engine returns equals transformers run on each window the tokenizer cuts, logits averaged."""
    task = SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class), window=32, stride=8)
    tokenizer = AutoTokenizer.from_pretrained(sentiment_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(sentiment_model_dir).eval()
    short, long = Engine(task, batch_size=3).predict([Record({"text": "a good film"}), Record({"text": LONG_TEXT})])
    windows = tokenizer(LONG_TEXT, truncation=True, max_length=32, stride=8, return_overflowing_tokens=True)
    assert (short.output["windows"], long.output["windows"]) == (1, len(windows["input_ids"]))
    assert long.output["windows"] > 10 and long.output["truncated"] is False
    # Together the windows hold every token of the text (each after the first repeats 8 of the one before).
    whole = tokenizer(LONG_TEXT)["input_ids"]
    assert sum(len(ids) - 2 for ids in windows["input_ids"]) - 8 * (len(windows["input_ids"]) - 1) == len(whole) - 2
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([ids])).logits for ids in windows["input_ids"]])
    probabilities = logits.mean(0).softmax(-1)
    expected = {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
    assert long.output["scores"] == pytest.approx(expected, abs=1e-5)


def test_the_models_own_window_is_the_default_and_an_option_overrides_it(sentiment_model_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "windowed"
    shutil.copytree(sentiment_model_dir, model_dir)
    write_metadata(model_dir, window=48)
    loaded = load_model(str(model_dir), SentimentTask.model_class)
    assert (SentimentTask(loaded).window, SentimentTask(loaded).stride) == (48, 12)
    assert SentimentTask(loaded, window=24, stride=0).window == 24
    [truncated] = Engine(SentimentTask(loaded, window=0)).predict([Record({"text": LONG_TEXT})])
    assert truncated.output["truncated"] is True and "windows" not in truncated.output  # 0: as pipelines read
    [prediction] = Engine(SentimentTask(loaded)).predict([Record({"text": LONG_TEXT})])
    assert prediction.output["windows"] > 1
    write_metadata(model_dir, window=48, stride=0)  # a model's stride goes with its window, not with another
    loaded = load_model(str(model_dir), SentimentTask.model_class)
    assert (SentimentTask(loaded).stride, SentimentTask(loaded, window=24).stride) == (0, 6)
    [unshared] = Engine(SentimentTask(loaded)).predict([Record({"text": LONG_TEXT})])
    assert unshared.output["windows"] < prediction.output["windows"]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"window": 8}, "--window must be between 16"), ({"window": 10_000}, "--window must be between 16"),
     ({"window": 32, "stride": 17}, "--stride must be between 0 and half the window (16)")],
)  # fmt: skip
def test_bad_windows_are_refused_with_the_limits(task, options, message):
    with pytest.raises(NlpkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SentimentTask(task.model, **options)


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
