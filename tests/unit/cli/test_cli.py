"""The command line: predict's input and output contract, models and db commands, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nlpkit.cli import build_cli


@pytest.fixture
def nlpkit(nlpkit_home):
    """Run the CLI in-process against an isolated NLPKIT_HOME; returns the click Result."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(build_cli(), list(args), input=input, catch_exceptions=False)

    return invoke


def test_predict_texts_given_as_arguments(nlpkit, sentiment_model_dir):
    result = nlpkit("predict", "sentiment", "a good film", "bad", "--model", str(sentiment_model_dir))
    assert result.exit_code == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outputs) == 2
    assert all(set(o) == {"label", "score", "scores", "truncated"} for o in outputs)


def test_predict_reads_json_and_plain_lines_from_stdin_one_output_per_line(nlpkit, sentiment_model_dir):
    lines = ['{"id": 1, "text": "great"}', "plain text line", '{"text": ""}', "another"]
    result = nlpkit("predict", "sentiment", "--model", str(sentiment_model_dir), input="\n".join(lines) + "\n")
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outputs) == 4
    assert outputs[2] == {"error": "field 'text' is empty"}
    assert "label" in outputs[0] and "label" in outputs[1] and "label" in outputs[3]
    assert result.exit_code == 1
    assert "1 input line(s) could not be processed" in result.stderr


def test_predict_reads_a_file(nlpkit, sentiment_model_dir, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"review {i}"}) for i in range(70)) + "\n")
    result = nlpkit("predict", "sentiment", "--model", str(sentiment_model_dir), "--input", str(path))
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 70


def test_a_hub_id_offline_fails_in_one_line_saying_what_to_do(nlpkit):
    result = nlpkit("predict", "sentiment", "hello", "--model", "distilbert/no-such-model-here")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "'distilbert/no-such-model-here' is not a local directory, not a registered model" in line
    assert "nlpkit models convert" in line


def test_no_registered_model_says_how_to_get_one(nlpkit):
    nlpkit("db", "upgrade")
    result = nlpkit("predict", "sentiment", "hello")
    assert result.exit_code == 1
    assert "no model is registered for task 'sentiment'" in result.stderr
    assert "nlpkit train sentiment" in result.stderr


def test_commands_needing_the_schema_ask_for_db_upgrade(nlpkit):
    result = nlpkit("models", "list")
    assert result.exit_code == 1
    assert "run `nlpkit db upgrade` first" in result.stderr


def test_db_upgrade_current_history_downgrade(nlpkit):
    assert nlpkit("db", "current").stdout.strip() == "base (no schema)"
    assert nlpkit("db", "upgrade").exit_code == 0
    assert nlpkit("db", "current").stdout.strip() == "0004"
    history = nlpkit("db", "history").stdout
    assert all(f"{before} -> {after}" in history for before, after in (("base", "0001"), ("0003", "0004")))
    assert nlpkit("db", "downgrade", "0001").exit_code == 0
    assert nlpkit("db", "current").stdout.strip() == "0001"
    assert nlpkit("db", "downgrade", "base").exit_code == 0
    assert nlpkit("db", "current").stdout.strip() == "base (no schema)"


def test_registered_models_load_by_name(nlpkit, sentiment_model_dir, nlpkit_home):
    from nlpkit import settings
    from nlpkit.models.files import model_revision
    from nlpkit.store import Database

    nlpkit("db", "upgrade")
    Database(settings.get("database_url")).models.register(
        name="tiny", task="sentiment", path=sentiment_model_dir, revision=model_revision(sentiment_model_dir)
    )
    listing = json.loads(nlpkit("models", "list", "--json").stdout)
    assert [m["name"] for m in listing] == ["tiny"]
    by_name = nlpkit("predict", "sentiment", "good", "--model", "tiny")
    by_default = nlpkit("predict", "sentiment", "good")  # newest registered for the task
    by_path = nlpkit("predict", "sentiment", "good", "--model", str(sentiment_model_dir))
    assert by_name.stdout == by_default.stdout == by_path.stdout
    assert json.loads(nlpkit("models", "show", "tiny").stdout)["task"] == "sentiment"
    assert nlpkit("models", "remove", "tiny").exit_code == 0
    assert "no model named 'tiny'" in nlpkit("models", "show", "tiny").stderr


def test_runs_are_listed_and_a_trained_model_shows_the_run_behind_it(nlpkit, tmp_path, monkeypatch):
    from nlpkit import settings
    from nlpkit.store import Database, TrainingRunRow

    nlpkit("db", "upgrade")
    database = Database(settings.get("database_url"))
    for name, status in (("first", "succeeded"), ("broken", "failed"), ("second", "succeeded")):
        run_id = database.runs.start(kind="train", task="sentiment", model_name=name, base_model="b", params={"lr": 1})
        database.runs.record_metrics(run_id, [{"epoch": 1, "accuracy": 0.75}, {"epoch": 2, "accuracy": 0.5}])
        database.runs.finish(run_id, status, error="ValueError: bad line" if status == "failed" else None)
        if status == "succeeded":
            database.models.register(name=name, task="sentiment", path=tmp_path, revision="r", training_run_id=run_id)

    listed = json.loads(nlpkit("runs", "list", "--json").stdout)
    assert [(run["model_name"], run["status"]) for run in listed] == [
        ("second", "succeeded"), ("broken", "failed"), ("first", "succeeded")
    ]  # fmt: skip
    assert [run["model_name"] for run in json.loads(nlpkit("runs", "list", "--json", "--limit", "1").stdout)] == [
        "second"
    ]
    monkeypatch.setenv("COLUMNS", "200")  # one table row per run
    [row] = [line for line in nlpkit("runs", "list", "--model", "first").stdout.splitlines() if "first" in line]
    assert "succeeded" in row and "accuracy 0.5" in row and "0.75" not in row  # the last evaluation
    shown = json.loads(nlpkit("models", "show", "first").stdout)
    run = shown["training_run"]
    assert (run["id"], run["params"], len(run["metrics"])) == (shown["training_run_id"], {"lr": 1}, 2)
    assert run["duration_s"] >= 0
    assert json.loads(nlpkit("runs", "show", str(listed[1]["id"])).stdout)["error"] == "ValueError: bad line"
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run_id = database.runs.start(kind="train", task="sentiment", model_name="killed", base_model="b", params={})
    with database.session() as session:
        session.get_one(TrainingRunRow, run_id).pid = killed.pid  # as if the child had started the run
    killed.kill()
    killed.wait(timeout=30)
    shown = json.loads(nlpkit("runs", "show", str(run_id)).stdout)
    assert (shown["status"], shown["pid"]) == ("lost", killed.pid)
    [row] = [line for line in nlpkit("runs", "list", "--model", "killed").stdout.splitlines() if "killed" in line]
    assert "lost" in row
    missing = nlpkit("runs", "show", "999")
    assert (missing.exit_code, missing.stderr.strip()) == (1, "Error: no run with id 999; see `nlpkit runs list`")


def test_unknown_task_is_a_one_line_error(nlpkit, fresh_plugins, monkeypatch):
    monkeypatch.setenv("NLPKIT_LOAD_PLUGINS", "nlpkit")  # the built-ins only, whatever else is installed
    result = nlpkit("predict", "nope", "text")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: unknown task 'nope'; known tasks: multilabel, ner, qa, sentiment"


def test_bad_database_url_is_a_one_line_error(nlpkit):
    result = nlpkit("--database-url", "nonsense://", "db", "current")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    from nlpkit.testing import save_tiny_distilbert

    root = tmp_path_factory.mktemp("task-models")
    return {
        "ner": save_tiny_distilbert(root / "ner", head="token-classification", labels=["O", "B-PER", "I-PER"]),
        "qa": save_tiny_distilbert(root / "qa", head="question-answering"),
        "multilabel": save_tiny_distilbert(root / "ml", labels=["joy", "anger", "fear"]),
    }


def test_predict_ner_flags_and_output(nlpkit, task_models):
    text = "anna met peter in oslo " * 10
    result = nlpkit("predict", "ner", text, "--model", str(task_models["ner"]), "--aggregation", "first",
                    "--stride", "8")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    [output] = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(output) == {"entities"}
    for entity in output["entities"]:
        assert set(entity) == {"type", "start", "end", "text", "score"}
        assert entity["text"] == text[entity["start"] : entity["end"]]
    bad = nlpkit("predict", "ner", "x", "--model", str(task_models["ner"]), "--aggregation", "longest")
    assert bad.exit_code == 2 and "'longest' is not one of" in bad.stderr


def test_predict_qa_flags_and_errors_per_line(nlpkit, task_models):
    lines = [
        json.dumps({"question": "who met peter?", "context": "anna met peter in oslo on monday " * 8}),
        json.dumps({"question": "who?"}),
    ]
    result = nlpkit("predict", "qa", "--model", str(task_models["qa"]), "--doc-stride", "16", "--max-seq-len", "48",
                    "--max-answer-len", "4", "--top-k", "3", "--allow-no-answer", input="\n".join(lines))  # fmt: skip
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert len(first["answers"]) == 3
    assert all(set(a) == {"text", "start", "end", "score"} for a in first["answers"])
    assert second == {"error": "missing field 'context'"}
    assert result.exit_code == 1


def test_predict_multilabel_threshold_and_top_k(nlpkit, task_models):
    result = nlpkit("predict", "multilabel", "so happy", "--model", str(task_models["multilabel"]),
                    "--threshold", "0", "--top-k", "2")  # fmt: skip
    [output] = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(output) == {"labels", "scores", "truncated"}
    assert len(output["labels"]) == 2 and set(output["scores"]) == {"joy", "anger", "fear"}


def test_the_command_line_starts_without_loading_torch_or_any_driver():
    """Commands that do not run a model (help, plugins, status, db...) must answer at once;
    importing torch and transformers alone takes seconds, and --help needs no Kafka client,
    database driver, SQLAlchemy or inference runtime."""
    heavy = {"torch", "transformers", "confluent_kafka", "psycopg", "sqlalchemy", "onnxruntime", "openvino", "nncf"}
    code = (
        "import sys; from nlpkit.cli import build_cli\n"
        "try:\n    build_cli()(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted({heavy!r} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "command",
    [["db", "upgrade"], ["models", "list"], ["runs", "list"], ["config", "--json"]],
    ids=lambda words: " ".join(words),
)
def test_the_database_url_can_follow_the_command_as_well_as_precede_it(nlpkit, tmp_path, command):
    url = f"sqlite:///{tmp_path / 'after.db'}"
    nlpkit("--database-url", url, "db", "upgrade")
    result = nlpkit(*command, "--database-url", url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "after.db").is_file()
    if command[0] == "config":
        shown = {row["name"]: row for row in json.loads(result.stdout)}
        assert shown["database_url"]["value"] == url and shown["database_url"]["source"] == "flag"


def test_predict_evaluate_and_quantize_take_the_openvino_backends(nlpkit, sentiment_copy, tmp_path):
    texts = ["a good film", "bad", "an utterly dull and lifeless script"]

    def labels(*backend: str) -> list[str]:
        result = nlpkit("predict", "sentiment", *texts, "--model", str(sentiment_copy), *backend)
        assert result.exit_code == 0, result.stderr
        return [json.loads(line)["label"] for line in result.stdout.splitlines()]

    assert labels("--backend", "openvino") == labels()
    data = tmp_path / "reviews.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(texts * 4)))
    assert nlpkit("db", "upgrade").exit_code == 0
    scores = {}
    for backend in ("torch", "openvino"):
        result = nlpkit("evaluate", "sentiment", "--data", str(data), "--model", str(sentiment_copy),
                        "--backend", backend, "--json")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        scores[backend] = json.loads(result.stdout)
    assert scores["openvino"]["accuracy"] == scores["torch"]["accuracy"]
    made = nlpkit("models", "quantize", str(sentiment_copy), "--task", "sentiment", "--data", str(data),
                  "--backend", "openvino-int8", "--min-agreement", "0.5")  # fmt: skip
    assert made.exit_code == 0, made.stderr
    assert "openvino-int8 model of" in made.stderr and "usable" in made.stderr
    assert (sentiment_copy / "openvino" / "model.int8.xml").is_file()
    assert len(labels("--backend", "openvino-int8")) == len(texts)
