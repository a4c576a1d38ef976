"""Fine-tuning on tiny random models: the loss falls, the best model is kept and registered."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nlpkit.engine import Engine
from nlpkit.errors import DataFormatError
from nlpkit.modeling import load_model, read_metadata
from nlpkit.store import TrainingRunRow
from nlpkit.tasks import Record
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.sentiment import SentimentTask
from nlpkit_plugins.trainer.batching import length_grouped_batches
from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune

POSITIVE = ["good", "great", "wonderful", "fun", "moving", "brilliant"]
NEGATIVE = ["bad", "terrible", "awful", "dull", "boring", "weak"]


def write_reviews(path: Path, count: int, seed: int) -> Path:
    """Learnable data: the label is given away by which word list a review draws from."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(count):
            label = rng.randint(0, 1)
            words = rng.choices(POSITIVE if label else NEGATIVE, k=rng.randint(1, 6))
            out.write(json.dumps({"text": "the film was " + " and ".join(words), "label": label}) + "\n")
    return path


@pytest.fixture
def base_model(tmp_path) -> Path:
    return save_tiny_distilbert(tmp_path / "base", head="base", seed=3)


def test_fine_tuning_learns_keeps_the_best_epoch_and_registers_it(tmp_path, base_model, database):
    config = FineTuneConfig(
        task="sentiment",
        data=write_reviews(tmp_path / "train.jsonl", 400, seed=1),
        eval_data=write_reviews(tmp_path / "dev.jsonl", 100, seed=2),
        base_model=str(base_model),
        name="tiny-sentiment",
        output_dir=tmp_path / "out",
        epochs=3,
        learning_rate=1e-3,
        batch_size=16,
        precision="fp32",
    )
    result = fine_tune(config, database)

    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < losses[0] < 0.75
    accuracies = [epoch["accuracy"] for epoch in result.history]
    assert result.best_metrics["accuracy"] == max(accuracies) > 0.9
    [entry] = database.list_models("sentiment")
    assert (entry.name, entry.path, entry.metrics) == ("tiny-sentiment", (tmp_path / "out").resolve(),
                                                       result.best_metrics)  # fmt: skip
    assert entry.revision == read_metadata(tmp_path / "out")["revision"]
    with database.session() as session:
        run = session.get_one(TrainingRunRow, result.run_id)
        assert (run.status, run.kind, len(run.metrics)) == ("succeeded", "train", 3)
        assert run.params["learning_rate"] == 1e-3 and run.duration_s > 0

    task = SentimentTask(load_model(str(tmp_path / "out"), SentimentTask.model_class))
    [good, bad] = Engine(task).predict([Record({"text": "the film was great"}), Record({"text": "the film was awful"})])
    assert (good.label, bad.label) == ("positive", "negative")


def test_a_failed_run_is_recorded_as_failed(tmp_path, base_model, database):
    bad_eval = tmp_path / "dev.jsonl"
    bad_eval.write_text('{"text": "fine", "label": "neutral"}\n')
    config = FineTuneConfig(
        task="sentiment", data=write_reviews(tmp_path / "train.jsonl", 50, seed=1), eval_data=bad_eval,
        base_model=str(base_model), name="x", output_dir=tmp_path / "out", epochs=1, precision="fp32",
    )  # fmt: skip
    with pytest.raises(DataFormatError, match=r"dev.jsonl:1: label 'neutral' is not one of the model's labels"):
        fine_tune(config, database)
    with database.session() as session:
        [run] = session.query(TrainingRunRow).all()
        assert run.status == "failed" and "neutral" in run.error
    assert database.list_models() == []


def test_length_grouped_batches_cover_every_example_once_with_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(3, 300) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(1))
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30  # random batches would spread over ~270 tokens
