"""``load_task(backend="auto")``: the recorded choice for these weights on this machine; on first use a tuning
on the data at hand or the training run's; else fp32 onnx, saying so. What a worker stores is the backend it
resolved to, never "auto"."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from reviews import sentences, write_reviews
from tuned import record_choice

from nlpkit import pipelines
from nlpkit.inference import tuning
from nlpkit.models.files import model_revision
from nlpkit.pipelines import ModelRegistry, load_task
from nlpkit.store import Database
from nlpkit.system import hardware
from nlpkit.testing import run_through_worker, save_tiny_distilbert


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.fixture
def tunes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path, Path]]:
    """First-use tunings, recorded as if ``nlpkit models tune`` had chosen openvino, without a child process."""
    calls: list[tuple[str, Path, Path]] = []

    def tune_in_child(task: str, path: Path, data: Path, device: str, min_agreement: float) -> None:
        calls.append((task, path, data))
        record_choice(path, "openvino")

    monkeypatch.setattr(pipelines, "_tune_in_child", tune_in_child)
    return calls


def test_auto_loads_the_recorded_choice(sentiment_copy: Path, tunes: list, caplog: pytest.LogCaptureFixture) -> None:
    record_choice(sentiment_copy, "openvino")
    assert load_task("sentiment", str(sentiment_copy), backend="auto").model.backend.name == "openvino"
    assert tunes == [] and warnings(caplog) == []  # nothing measured again, nothing to say


def test_first_use_without_data_or_a_run_falls_back_to_onnx_and_says_tune_would_measure(
    sentiment_copy: Path, tunes: list, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_task("sentiment", str(sentiment_copy), backend="auto")
    assert loaded.model.backend.name == "onnx"
    [line] = warnings(caplog)
    assert f"no usable choice recorded for this machine ({tuning.machine_key()})" in line
    assert f"using onnx. `nlpkit models tune {sentiment_copy} --task sentiment --data FILE` would measure" in line
    assert tunes == []
    assert tuning.recorded(sentiment_copy, model_revision(sentiment_copy)) is None  # a guess is not recorded


def test_another_machine_or_new_weights_choose_again(
    sentiment_copy: Path, tunes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_choice(sentiment_copy, "torch")
    data = write_reviews(sentiment_copy.parent / "dev.jsonl", 20, seed=3)
    try:
        with monkeypatch.context() as xeon:
            xeon.setattr(hardware, "_cpuinfo_lines", lambda: ["flags\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile"])
            hardware.cpu_flags.cache_clear()
            assert load_task("sentiment", str(sentiment_copy), backend="auto", tuning_data=data).model.backend.name == (
                "openvino"
            )
    finally:
        hardware.cpu_flags.cache_clear()
    assert tunes == [("sentiment", sentiment_copy, data)]
    assert load_task("sentiment", str(sentiment_copy), backend="auto").model.backend.name == "torch"  # still ours
    save_tiny_distilbert(sentiment_copy, labels=["negative", "positive"], seed=9)  # retrained in place
    assert load_task("sentiment", str(sentiment_copy), backend="auto", tuning_data=data).model.backend.name == (
        "openvino"
    )
    assert len(tunes) == 2


def test_first_use_tunes_on_the_training_runs_data(
    sentiment_copy: Path, database: Database, tunes: list, caplog: pytest.LogCaptureFixture
) -> None:
    dev = write_reviews(sentiment_copy.parent / "dev.jsonl", 20, seed=3)
    params = {"data": str(sentiment_copy.parent / "gone.jsonl"), "eval_data": str(dev)}
    run_id = database.runs.start(kind="train", task="sentiment", model_name="tiny", base_model=None, params=params)
    database.models.register(name="tiny", task="sentiment", path=sentiment_copy,
                             revision=model_revision(sentiment_copy), training_run_id=run_id)  # fmt: skip
    registry = ModelRegistry(database)
    assert registry.training_data(sentiment_copy) == [dev]  # evaluation data first; files not here skipped
    loaded = load_task("sentiment", "tiny", backend="auto", registry=registry)
    assert loaded.model.backend.name == "openvino"
    assert tunes == [("sentiment", sentiment_copy, dev)]
    [line] = warnings(caplog)
    assert line.startswith("backend auto for 'tiny': openvino, 300.0 seq/s, agreement 100.00% with fp32 torch")
    assert "first use here" in line and str(tuning.record_file(sentiment_copy, loaded.model.revision)) in line
    assert ModelRegistry(Database("sqlite://")).training_data(sentiment_copy) == []  # no schema: nothing to ask


def test_a_worker_stores_the_backend_auto_resolved_to(sentiment_copy: Path) -> None:
    record_choice(sentiment_copy, "openvino")
    run = run_through_worker("sentiment", sentiment_copy, sentences(5), backend="auto")
    assert [row["backend"] for row in run.predictions] == ["openvino"] * 5


def test_a_model_given_by_its_directory_is_not_looked_up_in_the_registry(
    sentiment_copy: Path, tunes: list, tmp_path: Path
) -> None:
    """``consume --no-store`` with a model directory must touch no database, not even to look for its data."""
    never = tmp_path / "never.db"
    registry = ModelRegistry(Database(f"sqlite:///{never}"))
    assert load_task("sentiment", str(sentiment_copy), backend="auto", registry=registry).model.backend.name == "onnx"
    assert tunes == [] and not never.exists()
