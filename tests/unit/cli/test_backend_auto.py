"""``nlpkit models tune`` and ``--backend auto``, the default of predict, evaluate and consume: the recorded
choice is what runs and what is stored; listings show it. Speeds in ``models tune`` are injected (never real)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from reviews import write_reviews
from tuned import record_choice

from nlpkit.cli import build_cli
from nlpkit.inference import tuning
from nlpkit.inference.int8 import outputs
from nlpkit.models.files import model_revision
from nlpkit.store import Database
from nlpkit.tasks.base import Record, Task
from nlpkit.testing import save_tiny_distilbert


@pytest.fixture
def nlpkit(nlpkit_home: Path):
    """Run the CLI in-process against an isolated NLPKIT_HOME with a migrated database."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(build_cli(), list(args), catch_exceptions=False)

    assert invoke("db", "upgrade").exit_code == 0
    return invoke


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    return write_reviews(tmp_path / "reviews.jsonl", 40, seed=5)


def test_models_tune_records_the_fastest_backend_that_agrees(
    nlpkit, sentiment_copy: Path, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = {"torch": 1.0, "onnx": 0.25}

    def measure(task: Task, records: Sequence[Record]) -> tuple[float, list[Any]]:
        return seconds[task.model.backend.name], outputs(task, records)

    monkeypatch.setattr(tuning, "timed_run", measure)
    result = nlpkit("models", "tune", str(sentiment_copy), "--task", "sentiment", "--data", str(reviews),
                    "--backend", "torch", "--backend", "onnx", "--backend", "int8")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = {cells[1]: line for line in result.stdout.splitlines() if (cells := line.split())[:1] == ["│"]}
    assert "160.0" in rows["onnx"] and "100.00%" in rows["onnx"] and "chosen: the fastest that agrees" in rows["onnx"]
    assert "slower" in rows["torch"] and "skipped:" in rows["int8"]
    assert "on onnx on this machine" in " ".join(result.stderr.split())
    record = tuning.recorded(sentiment_copy, model_revision(sentiment_copy))
    assert record.backend == "onnx" and record.sample == {"data": str(reviews), "records": 40, "seed": 0}
    assert record.fingerprint == tuning.machine_key()
    assert record.measured("onnx").seq_per_s == 160.0 and record.measured("int8").skipped.startswith("not made")

    seconds["onnx"] = 4.0  # --if-missing keeps the recorded choice and measures nothing
    kept = nlpkit("models", "tune", str(sentiment_copy), "--task", "sentiment", "--if-missing", "--json")
    assert kept.exit_code == 0, kept.stderr
    assert json.loads(kept.stdout) == record.as_json()
    again = nlpkit("models", "tune", str(sentiment_copy), "--task", "sentiment", "--data", str(reviews),
                   "--backend", "torch", "--backend", "onnx", "--json")  # fmt: skip
    assert json.loads(again.stdout)["backend"] == "torch"  # without it, tuning measures again


def test_predict_and_evaluate_run_the_recorded_backend_and_record_its_name(
    nlpkit, sentiment_copy: Path, reviews: Path
) -> None:
    record_choice(sentiment_copy, "openvino")
    assert not (sentiment_copy / "openvino").exists()
    predicted = nlpkit("predict", "sentiment", "a good film", "--model", str(sentiment_copy))
    assert predicted.exit_code == 0, predicted.stderr
    assert json.loads(predicted.stdout)["label"] in ("negative", "positive")
    assert (sentiment_copy / "openvino" / "model.xml").is_file()  # converted because auto chose it
    evaluated = nlpkit("evaluate", "sentiment", "--data", str(reviews), "--model", str(sentiment_copy), "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    [run] = json.loads(nlpkit("runs", "list", "--json").stdout)
    assert run["params"]["backend"] == "openvino"


def test_evaluate_tunes_on_its_data_on_first_use(
    nlpkit, sentiment_copy: Path, reviews: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real thing: ``nlpkit models tune --if-missing`` in a child process, on evaluate's data."""
    evaluated = nlpkit("evaluate", "sentiment", "--data", str(reviews), "--model", str(sentiment_copy), "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    record = tuning.recorded(sentiment_copy, model_revision(sentiment_copy))
    assert record is not None and record.sample["data"] == str(reviews) and record.sample["records"] == 40
    assert {m.backend for m in record.measurements if m.skipped is None} >= {"torch", "onnx", "openvino"}
    [run] = json.loads(nlpkit("runs", "list", "--json").stdout)
    assert run["params"]["backend"] == record.backend != "auto"
    [line] = [r.getMessage() for r in caplog.records if "first use here" in r.getMessage()]
    assert line.startswith(f"backend auto for '{sentiment_copy}': {record.backend}, ")


def test_consume_resolves_auto_for_each_model(
    nlpkit, sentiment_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ner = save_tiny_distilbert(tmp_path / "ner", head="token-classification", labels=["O", "B-PER", "I-PER"])
    record_choice(sentiment_copy, "openvino")
    record_choice(ner, "torch")
    served: dict[str, Any] = {}

    def serve(config: Any, engines: dict[str, Any], *_args: Any, **_kwargs: Any) -> SimpleNamespace:
        served.update(engines)
        return SimpleNamespace(messages=0, predictions=0, dead_letters=0, tombstones=0, batches=0)

    monkeypatch.setattr("nlpkit.stream.service.serve", serve)
    result = nlpkit("consume", "--topic", "reviews", "--task", "sentiment", "--task", "ner",
                    "--model", f"sentiment={sentiment_copy}", "--model", f"ner={ner}")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert {task: engine.loaded.backend.name for task, engine in served.items()} == {
        "sentiment": "openvino",
        "ner": "torch",
    }


def test_models_list_show_and_status_give_the_recorded_choice(nlpkit, sentiment_copy: Path, nlpkit_home: Path) -> None:
    database = Database(f"sqlite:///{nlpkit_home / 'nlpkit.db'}")
    revision = model_revision(sentiment_copy)
    database.models.register(name="tiny", task="sentiment", path=sentiment_copy, revision=revision)

    def listed() -> Any:
        return json.loads(nlpkit("models", "list", "--json").stdout)[0]["auto_backend"]

    assert listed() is None
    record_choice(sentiment_copy, "openvino")
    assert listed() == "openvino"
    assert "openvino" in nlpkit("models", "list").stdout
    assert json.loads(nlpkit("models", "show", "tiny").stdout)["auto_backend"] == "openvino"
    status = nlpkit("status", "--json", "--bootstrap-servers", "127.0.0.1:1")  # Kafka fails; the models part stands
    assert json.loads(status.stdout)["models"][0]["auto_backend"] == "openvino"
