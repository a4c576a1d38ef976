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
    streamed = [json.loads(value)["text"] for _key, value in demo.streamed_messages(DATA / "imdb" / "train.jsonl")]
    assert len(streamed) == demo.SAMPLE_SIZE
    training_file = demo.full_sentences(DATA / "sst2" / "train.tsv")  # exactly what ensure_model trains on
    training = {example.record.fields["text"].strip() for example in SentimentTask.read_examples(training_file)}
    assert len(training) > demo.TRAIN_EXAMPLES  # the sample is drawn from these
    assert not training & {text.strip() for text in streamed}
