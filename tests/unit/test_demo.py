"""The demo's promise that its model never saw the reviews it is judged on."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from nlpkit_plugins.sentiment import SentimentTask

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("NLPKIT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def demo(nlpkit_home):
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_streamed_review_is_among_the_training_examples(demo):
    imdb = DATA / "imdb" / "train.jsonl"
    streamed = {json.loads(value)["text"].strip() for _key, value in demo.streamed_messages(imdb)}
    assert len(streamed) == demo.SAMPLE_SIZE
    training_file = demo.training_reviews(imdb)  # exactly what ensure_model samples its examples from
    training = [example.record.fields["text"].strip() for example in SentimentTask.read_examples(training_file)]
    assert len(training) > demo.TRAIN_EXAMPLES
    assert not set(training) & streamed
    # Everything else in IMDb's training file is kept: only the streamed reviews are left out.
    kept_and_streamed = len(training) + sum(json.loads(line)["text"].strip() in streamed for line in imdb.open())
    assert kept_and_streamed == sum(1 for line in imdb.open() if line.strip())


def test_the_training_reviews_are_written_once(demo):
    imdb = DATA / "imdb" / "train.jsonl"
    first = demo.training_reviews(imdb)
    written = first.stat().st_mtime_ns
    assert demo.training_reviews(imdb) == first
    assert first.stat().st_mtime_ns == written


def test_agreement_is_judged_by_review_not_by_imdb_id(demo):
    """IMDb numbers its positive and negative reviews separately, so some streamed keys name two reviews:
    a label looked up by key would be the other review's for one of each such pair."""
    messages = demo.streamed_messages(DATA / "imdb" / "train.jsonl")
    assert len({key for key, _value in messages}) < demo.SAMPLE_SIZE  # the trap is really in the sample
    gold = demo.gold_labels(messages)
    assert len(gold) == demo.SAMPLE_SIZE
    for _key, value in messages:
        review = json.loads(value)
        assert gold[review["text"]] == ("positive" if review["label"] == 1 else "negative")
