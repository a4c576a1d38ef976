"""Every built-in task through `nlpkit evaluate` and `nlpkit train`, on tiny random models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from nlpkit import settings
from nlpkit.cli import build_cli
from nlpkit.store import Database, TrainingRunRow
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune

NAMES = ["anna", "peter", "maria"]
PLACES = ["paris", "berlin", "oslo"]
FILLER = ["met", "in", "the", "city", "of", "with", "friends", "yesterday"]


def ner_data(path: Path, count: int, seed: int) -> Path:
    """CoNLL-style sentences where names and places are always tagged: learnable."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        for _ in range(rng.randint(3, 8)):
            kind = rng.random()
            if kind < 0.25:
                lines.append(f"{rng.choice(NAMES)} NNP B-NP I-PER")
            elif kind < 0.45:
                lines.append(f"{rng.choice(PLACES)} NNP B-NP I-LOC")
            else:
                lines.append(f"{rng.choice(FILLER)} XX O O")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def qa_data(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        context = f"{' '.join(rng.choices(FILLER, k=4))} {name} lives in {place} {' '.join(rng.choices(FILLER, k=3))}"
        rows.append({"question": f"where does {name} live?", "context": context,
                     "answers": [{"text": place, "answer_start": context.index(f"in {place}") + 3}]})  # fmt: skip
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def multilabel_data(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    cues = {"joy": "wonderful", "anger": "furious", "fear": "scared"}
    rows = []
    for _ in range(count):
        labels = rng.sample(list(cues), rng.randint(1, 2))
        words = [cues[label] for label in labels] + rng.choices(FILLER, k=4)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": labels})
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def sentiment_data(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        rows.append({"text": f"the film was {rng.choice(['great', 'good'] if label else ['awful', 'bad'])}",
                     "label": label})  # fmt: skip
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


TASKS = {
    # task: (data writer, file name, head, labels, headline metric keys of `evaluate --json`)
    "sentiment": (sentiment_data, "data.jsonl", "sequence-classification", ["negative", "positive"],
                  {"accuracy", "f1", "n"}),
    "ner": (ner_data, "data.conll", "token-classification", ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
            {"precision", "recall", "f1", "n"}),
    "qa": (qa_data, "data.jsonl", "question-answering", None, {"exact_match", "f1", "n"}),
    "multilabel": (multilabel_data, "data.jsonl", "sequence-classification", ["anger", "fear", "joy"],
                   {"micro_f1", "macro_f1", "n"}),
}  # fmt: skip


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_prints_the_task_metrics_as_json_and_records_the_run(task, tmp_path, nlpkit_home):
    write, name, head, labels, keys = TASKS[task]
    data = write(tmp_path / name, 20, seed=1)
    model = save_tiny_distilbert(tmp_path / "model", head=head, labels=labels)
    runner = CliRunner()
    assert runner.invoke(build_cli(), ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(build_cli(), ["evaluate", task, "--model", str(model), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores) == keys and scores["n"] == 20
    with Database(settings.get("database_url")).session() as session:
        [run] = session.query(TrainingRunRow).all()
        assert (run.kind, run.task, run.status, run.metrics) == ("evaluate", task, "succeeded", [scores])


@pytest.mark.parametrize("task", ["ner", "qa", "multilabel"])
def test_every_task_can_be_fine_tuned_and_learns(task, tmp_path, database):
    write, name, _head, _labels, keys = TASKS[task]
    base = save_tiny_distilbert(tmp_path / "base", head="base", seed=3)
    config = FineTuneConfig(
        task=task,
        data=write(tmp_path / f"train-{name}", 240, seed=1),
        eval_data=write(tmp_path / f"dev-{name}", 60, seed=2),
        base_model=str(base),
        name=f"tiny-{task}",
        output_dir=tmp_path / "out",
        epochs=8,
        learning_rate=2e-3,
        batch_size=16,
        precision="fp32",
    )
    result = fine_tune(config, database)
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    headline = next(iter(result.best_metrics))
    assert result.best_metrics[headline] > {"ner": 0.5, "qa": 30, "multilabel": 0.5}[task], result.history
    assert [entry.name for entry in database.models.list(task)] == [f"tiny-{task}"]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_without_evaluation_data(task, tmp_path, nlpkit_home):
    """`--eval-data` is optional: the run trains, keeps its last state and registers it (an empty evaluation
    set once reached the QA tokenizer, which refuses an empty batch: `nlpkit train qa` died with a traceback)."""
    write, name, _head, _labels, _keys = TASKS[task]
    base = save_tiny_distilbert(tmp_path / "base", head="base", seed=3)
    runner = CliRunner()
    assert runner.invoke(build_cli(), ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(build_cli(), [
        "train", task, "--data", str(write(tmp_path / f"train-{name}", 40, seed=1)), "--model", str(base),
        "--name", f"tiny-{task}", "--epochs", "1", "--precision", "fp32",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    with Database(settings.get("database_url")).session() as session:
        [run] = session.query(TrainingRunRow).all()
        assert (run.kind, run.task, run.status) == ("train", task, "succeeded")
    assert [entry.name for entry in Database(settings.get("database_url")).models.list(task)] == [f"tiny-{task}"]
