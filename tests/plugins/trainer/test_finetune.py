"""Fine-tuning on tiny random models: the loss falls, the best model is kept and registered."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from reviews import write_reviews

from nlpkit.cli import build_cli
from nlpkit.errors import DataFormatError, NlpkitError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.models.files import read_metadata
from nlpkit.store import TrainingRunRow
from nlpkit.tasks.base import Record
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.sentiment import SentimentTask
from nlpkit_plugins.trainer.batching import length_grouped_batches
from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune


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
    [entry] = database.models.list("sentiment")
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
    assert database.models.list() == []


def test_length_grouped_batches_cover_every_example_once_with_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(3, 300) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(1))
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30  # random batches would spread over ~270 tokens


def tiny_config(tmp_path: Path, base_model: Path, **overrides) -> FineTuneConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = {
        "task": "sentiment",
        "data": write_reviews(tmp_path / "train.jsonl", 200, seed=1),
        "eval_data": write_reviews(tmp_path / "dev.jsonl", 60, seed=2),
        "base_model": str(base_model),
        "name": "tiny",
        "output_dir": tmp_path / "out",
        "epochs": 3,
        "learning_rate": 1e-3,
        "batch_size": 16,
        "precision": "fp32",
        "device": "cpu",
    }
    return FineTuneConfig(**(settings | overrides))


def test_an_interrupted_run_resumes_where_it_stopped_and_ends_where_a_whole_run_ends(
    tmp_path, base_model, database, monkeypatch
):
    whole = fine_tune(tiny_config(tmp_path / "whole", base_model), database)

    from nlpkit_plugins.trainer.loop import TrainingLoop

    original = TrainingLoop._save_state

    def interrupt_after_first_save(self):
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingLoop, "_save_state", interrupt_after_first_save)
    config = tiny_config(tmp_path / "split", base_model, name="split")
    with pytest.raises(KeyboardInterrupt):
        fine_tune(config, database)
    monkeypatch.setattr(TrainingLoop, "_save_state", original)
    with database.session() as session:
        assert session.query(TrainingRunRow).filter_by(model_name="split").one().status == "interrupted"

    resumed = fine_tune(tiny_config(tmp_path / "split", base_model, name="split", resume=True), database)
    assert [row["step"] for row in resumed.history] == [row["step"] for row in whole.history]
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    for mine, reference in zip(resumed.history, whole.history, strict=True):
        assert mine["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-5)
        assert mine["accuracy"] == reference["accuracy"]
    assert not (tmp_path / "split" / "out.state").exists()  # a finished run leaves nothing to resume


def test_resume_without_saved_state_says_so(tmp_path, base_model, database):
    with pytest.raises(NlpkitError, match="nothing to resume"):
        fine_tune(tiny_config(tmp_path, base_model, resume=True), database)


def test_gradient_accumulation_and_step_evaluations(tmp_path, base_model, database):
    result = fine_tune(tiny_config(tmp_path, base_model, epochs=2, grad_accum=3, eval_steps=2), database)
    batches_per_epoch = -(-200 // 16)  # 13
    steps_per_epoch = -(-batches_per_epoch // 3)  # 5
    assert [row["step"] for row in result.history] == [2, 4, 6, 8, 10]
    assert result.history[-1]["step"] == 2 * steps_per_epoch


def test_early_stopping_ends_the_run_after_patience_runs_out(tmp_path, base_model, database):
    # A learning rate this small changes nothing measurable, so accuracy stops improving at once.
    result = fine_tune(tiny_config(tmp_path, base_model, epochs=6, learning_rate=1e-9, patience=2), database)
    assert len(result.history) == 3
    assert result.best_metrics == {k: result.history[0][k] for k in ("accuracy", "f1")}


def test_frozen_layers_keep_their_weights_while_the_rest_learns(tmp_path, base_model, database):
    from safetensors.torch import load_file

    fine_tune(tiny_config(tmp_path, base_model, epochs=1, freeze_layers=1), database)
    before = load_file(base_model / "model.safetensors")  # a bare DistilBertModel: no "distilbert." prefix
    after = load_file(tmp_path / "out" / "model.safetensors")
    changed = {name for name in before if not before[name].equal(after[f"distilbert.{name}"])}
    assert len(before) > 20 and not any(name.startswith(("embeddings.", "transformer.layer.0.")) for name in changed)
    assert any(name.startswith("transformer.layer.1.") for name in changed)


def test_one_process_trains_in_fp32_then_in_bf16(tmp_path, base_model, database):
    """Accelerate keeps one precision per process: a second run asking for another must still train
    (on CPUs with bf16 units `--precision auto` means bf16, so this is any fp32 run followed by a default one)."""
    first = fine_tune(tiny_config(tmp_path / "fp32", base_model, epochs=1), database)
    in_bf16 = tiny_config(tmp_path / "bf16", base_model, epochs=1, precision="bf16", name="tiny-bf16")
    second = fine_tune(in_bf16, database)
    back = fine_tune(tiny_config(tmp_path / "again", base_model, epochs=1, name="tiny-again"), database)
    assert [len(run.history) for run in (first, second, back)] == [1, 1, 1]
    assert (second.model_dir / "model.safetensors").is_file() and back.best_metrics == first.best_metrics


def test_freezing_more_layers_than_the_model_has_is_one_line(tmp_path, base_model, nlpkit_home):
    runner = CliRunner()
    assert runner.invoke(build_cli(), ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(build_cli(), [
        "train", "sentiment", "--data", str(write_reviews(tmp_path / "train.jsonl", 20, seed=1)),
        "--model", str(base_model), "--name", "x", "--freeze-layers", "3",
    ])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --freeze-layers 3: the model has 2 transformer layers"


def test_two_processes_under_accelerate_launch(tmp_path, base_model, nlpkit_home):
    """The same `nlpkit train` command, started by `accelerate launch` as two CPU processes."""
    import os
    import socket
    import subprocess
    import sys

    from nlpkit import settings
    from nlpkit.store import Database

    runner = CliRunner()
    assert runner.invoke(build_cli(), ["db", "upgrade"]).exit_code == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        # On a machine without GPUs, --multi_gpu starts torchrun, and the trainer joins a gloo group on CPU.
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "nlpkit", "train", "sentiment",
         "--data", str(write_reviews(tmp_path / "train.jsonl", 200, seed=1)),
         "--eval-data", str(write_reviews(tmp_path / "dev.jsonl", 60, seed=2)),
         "--model", str(base_model), "--name", "two-procs", "--epochs", "3", "--lr", "1e-3", "--batch-size", "8"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    database = Database(settings.get("database_url"))
    [entry] = database.models.list("sentiment")  # registered once, by the main process
    with database.session() as session:
        [run] = session.query(TrainingRunRow).all()
        assert run.status == "succeeded" and len(run.metrics) == 3
        # 200 examples in batches of 8 make 25 batches; two processes take 13 each (one padded),
        # so an epoch is 13 optimizer steps, not 25.
        assert [row["step"] for row in run.metrics] == [13, 26, 39]
    assert entry.metrics["accuracy"] > 0.8
