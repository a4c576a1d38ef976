"""Every command meets a bad argument, a missing file, an unreachable broker or database, or an
unknown task or model with one clear line and a non-zero exit: no traceback, no client noise.

Each case runs ``nlpkit`` as a real process, so what is checked is exactly what a person
sees on the terminal, librdkafka's own stderr included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from terminal import error_line
from tuned import record_choice

from nlpkit.store import migrated_database
from nlpkit.testing import save_tiny_distilbert

NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once
NO_DATABASE = "postgresql+psycopg://nlpkit:hunter2@127.0.0.1:1/nlpkit"
MODEL = "{model}"
DATA = "{data}"

# (case id, arguments, text the one error line must contain); {model} and {data} are filled in.
BAD_ARGUMENTS = [
    ("predict-batch-size", ["predict", "sentiment", "--batch-size", "abc", "x"], "not a valid integer"),
    ("consume-port", ["consume", "--topic", "t", "--task", "sentiment", "--metrics-port", "99999"], "99999"),
    ("consume-setting", ["consume", "--topic", "t", "--task", "sentiment", "-X", "novalue"], "expected KEY=VALUE"),
    ("consume-option", ["consume", "--topic", "t", "--task", "sentiment", "-o", "nope=1"], "no task here has"),
    ("results-since", ["results", "--since", "yesterday-ish"], "neither an ISO date/time nor an age"),
    ("results-format", ["results", "--format", "xml"], "'xml' is not one of"),
    ("dead-letters-limit", ["dead-letters", "list", "--limit", "0"], "--limit"),
    ("dead-letters-nothing", ["dead-letters", "replay"], "pass --all"),
    (
        "train-epochs",
        ["train", "sentiment", "--data", DATA, "--model", MODEL, "--name", "n", "--epochs", "0"],
        "'--epochs'",
    ),
    ("db-downgrade", ["db", "downgrade", "nonsense"], "Can't locate revision identified by 'nonsense'"),
    ("models-convert-layers", ["models", "convert", MODEL, "{tmp}/out", "--layers", "0,x"], "--layers"),
    (
        "bench-backend",
        ["bench", "sentiment", "--model", MODEL, "--data", DATA, "--backend", "fp8"],
        "'fp8' is not one of",
    ),
    (
        "quantize-agreement",
        ["models", "quantize", MODEL, "--task", "sentiment", "--data", DATA, "--min-agreement", "2"],
        "--min-agreement",
    ),
    ("predict-backend", ["predict", "sentiment", "--backend", "fastest", "x"], "'fastest' is not one of 'auto', "),
    (
        "tune-agreement",
        ["models", "tune", MODEL, "--task", "sentiment", "--data", DATA, "--min-agreement", "2"],
        "--min-agreement",
    ),
    ("tune-backend", ["models", "tune", MODEL, "--task", "sentiment", "--backend", "auto"], "'auto' is not one of"),
    ("tune-no-data", ["models", "tune", MODEL, "--task", "sentiment"], "has no recorded training run"),
    ("predict-int8", ["predict", "sentiment", "--model", MODEL, "--backend", "int8", "x"], "nlpkit models quantize"),
    (
        "predict-openvino-int8",
        ["predict", "sentiment", "--model", MODEL, "--backend", "openvino-int8", "x"],
        "--backend openvino-int8",
    ),
]
MISSING_FILES = [
    ("predict-input", ["predict", "sentiment", "--model", MODEL, "--input", "/no/such.txt"], "/no/such.txt"),
    ("evaluate-data", ["evaluate", "sentiment", "--data", "/no/such.tsv"], "/no/such.tsv"),
    ("send-file", ["send", "--topic", "t", "/no/such.jsonl"], "/no/such.jsonl"),
    ("train-data", ["train", "sentiment", "--data", "/no/such.tsv", "--model", MODEL, "--name", "n"], "/no/such.tsv"),
    ("distill-data", ["distill", "--teacher", MODEL, "--data", "/no/such.txt", "--name", "n"], "/no/such.txt"),
    ("split-squad", ["split-squad", "/no/such.json", "--train-articles", "2", "--out-dir", "{tmp}"], "/no/such.json"),
    ("convert-source", ["models", "convert", "/no/such-model", "{tmp}/out"], "/no/such-model"),
    ("bench-data", ["bench", "sentiment", "--model", MODEL, "--data", "/no/such.tsv"], "/no/such.tsv"),
    ("tune-data", ["models", "tune", MODEL, "--task", "sentiment", "--data", "/no/such.tsv"], "/no/such.tsv"),
]
NO_BROKER_CASES = [
    ("consume", ["consume", "--topic", "t", "--task", "sentiment", "--model", MODEL, "--bootstrap-servers", NO_BROKER]),
    ("send", ["send", "--topic", "t", DATA, "--bootstrap-servers", NO_BROKER]),
    ("topics-list", ["topics", "list", "--bootstrap-servers", NO_BROKER]),
    ("topics-create", ["topics", "create", "t", "--bootstrap-servers", NO_BROKER]),
    ("status", ["status", "--bootstrap-servers", NO_BROKER]),
]
NO_DATABASE_CASES = [
    ("db-upgrade", ["db", "upgrade"]),
    ("db-current", ["db", "current"]),
    ("models-list", ["models", "list"]),
    ("runs-list", ["runs", "list"]),
    ("results", ["results", "--count"]),
    ("dead-letters", ["dead-letters", "list"]),
    ("consume", ["consume", "--topic", "t", "--task", "sentiment", "--model", MODEL]),
    ("evaluate", ["evaluate", "sentiment", "--data", DATA, "--model", MODEL]),
    ("train", ["train", "sentiment", "--data", DATA, "--model", MODEL, "--name", "n"]),
]
UNKNOWN_NAMES = [
    ("predict-task", ["predict", "nope", "x"], "unknown task 'nope'"),
    ("consume-task", ["consume", "--topic", "t", "--task", "nope"], "unknown task 'nope'"),
    ("evaluate-task", ["evaluate", "nope", "--data", DATA], "unknown task 'nope'"),
    ("train-task", ["train", "nope", "--data", DATA, "--model", MODEL, "--name", "n"], "unknown task 'nope'"),
    ("predict-model", ["predict", "sentiment", "--model", "no-such-model", "x"], "not a registered model"),
    ("consume-model", ["consume", "--topic", "t", "--task", "sentiment", "--model", "nope"], "not a registered model"),
    ("evaluate-model", ["evaluate", "sentiment", "--data", DATA, "--model", "nope"], "not a registered model"),
    ("train-model", ["train", "sentiment", "--data", DATA, "--model", "nope", "--name", "n"], "not a registered model"),
    (
        "distill-teacher",
        ["distill", "--teacher", "nope", "--student-layers", "0", "--data", DATA, "--name", "n"],
        "not a registered model",
    ),
    ("tune-model", ["tune-thresholds", "--model", "nope", "--data", "{tagged}"], "not a registered model"),
    ("models-show", ["models", "show", "nope"], "no model named 'nope'"),
    ("models-remove", ["models", "remove", "nope"], "no model named 'nope'"),
    ("dead-letters-show", ["dead-letters", "show", "12345"], "no dead letter with id 12345"),
    ("runs-show", ["runs", "show", "12345"], "no run with id 12345"),
    ("bench-task", ["bench", "nope", "--model", MODEL, "--data", DATA, "--no-stream"], "unknown task 'nope'"),
    ("bench-model", ["bench", "sentiment", "--model", "nope", "--data", DATA, "--no-stream"], "not a registered model"),
    ("quantize-model", ["models", "quantize", "nope", "--task", "sentiment", "--data", DATA], "not a registered model"),
    ("models-tune-model", ["models", "tune", "nope", "--task", "sentiment", "--data", DATA], "not a registered model"),
    ("models-tune-task", ["models", "tune", MODEL, "--task", "nope", "--data", DATA], "unknown task 'nope'"),
]


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> dict[str, str]:
    """A migrated home, a tiny model and a small labelled file for the commands to be pointed at."""
    root = tmp_path_factory.mktemp("cli-errors")
    home = root / "home"
    database = migrated_database(f"sqlite:///{home / 'nlpkit.db'}")
    database.dispose()
    data = root / "reviews.jsonl"
    data.write_text('{"text": "a good film", "label": "positive"}\n{"text": "dull", "label": "negative"}\n')
    tagged = root / "tagged.jsonl"
    tagged.write_text('{"text": "a good film", "labels": ["joy"]}\n')
    model = save_tiny_distilbert(root / "model", labels=["negative", "positive"])
    record_choice(model, "torch", threads=1)  # --backend auto resolves without a word, as for a tuned model
    return {"home": str(home), "model": str(model), "data": str(data), "tagged": str(tagged), "tmp": str(root)}


def run_nlpkit(setting: dict[str, str], arguments: list[str], **environment: str) -> subprocess.CompletedProcess:
    filled = [argument.format(**setting) for argument in arguments]
    env = {**os.environ, "NLPKIT_HOME": setting["home"], "NLPKIT_THREADS": "1", **environment}
    for inherited in ("NLPKIT_DATABASE_URL", "NLPKIT_CONFIG", "NLPKIT_DEBUG"):
        if inherited not in environment:
            env.pop(inherited, None)
    return subprocess.run(
        [sys.executable, "-m", "nlpkit", *filled],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=setting["tmp"],
    )


@pytest.fixture(scope="module")
def outcomes(setting) -> dict[tuple[str, str], subprocess.CompletedProcess]:
    """Every case run once, four processes at a time (most of each run is Python starting up)."""
    runs = {("bad", case_id): (arguments, {}) for case_id, arguments, _ in BAD_ARGUMENTS}
    runs |= {("file", case_id): (arguments, {}) for case_id, arguments, _ in MISSING_FILES}
    runs |= {("broker", case_id): (arguments, {}) for case_id, arguments in NO_BROKER_CASES}
    runs |= {("database", case_id): (args, {"NLPKIT_DATABASE_URL": NO_DATABASE}) for case_id, args in NO_DATABASE_CASES}
    runs |= {("name", case_id): (arguments, {}) for case_id, arguments, _ in UNKNOWN_NAMES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_nlpkit, setting, args, **env) for key, (args, env) in runs.items()}
        return {key: future.result() for key, future in futures.items()}


def ids(cases: list[tuple]) -> list[str]:
    return [case[0] for case in cases]


@pytest.mark.parametrize("case_id, arguments, expected", BAD_ARGUMENTS, ids=ids(BAD_ARGUMENTS))
def test_a_bad_argument_is_one_line(outcomes, case_id, arguments, expected):
    assert expected in error_line(outcomes["bad", case_id])


@pytest.mark.parametrize("case_id, arguments, expected", MISSING_FILES, ids=ids(MISSING_FILES))
def test_a_missing_file_is_one_line_naming_it(outcomes, case_id, arguments, expected):
    assert expected in error_line(outcomes["file", case_id])


@pytest.mark.parametrize("case_id, arguments", NO_BROKER_CASES, ids=ids(NO_BROKER_CASES))
def test_an_unreachable_broker_is_one_line_saying_what_to_do(outcomes, case_id, arguments):
    line = error_line(outcomes["broker", case_id])
    assert f"cannot reach a Kafka broker at {NO_BROKER}" in line
    assert "nlpkit services kafka start" in line


@pytest.mark.parametrize("case_id, arguments", NO_DATABASE_CASES, ids=ids(NO_DATABASE_CASES))
def test_an_unreachable_database_is_one_line_without_its_password(outcomes, case_id, arguments):
    result = outcomes["database", case_id]
    line = error_line(result)
    assert "database error" in line and "Connection refused" in line
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize("case_id, arguments, expected", UNKNOWN_NAMES, ids=ids(UNKNOWN_NAMES))
def test_an_unknown_task_or_model_is_one_line(outcomes, case_id, arguments, expected):
    assert expected in error_line(outcomes["name", case_id])


def test_debug_shows_the_traceback_instead(setting):
    result = run_nlpkit(setting, ["--debug", "models", "show", "nope"])
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_every_command_is_covered():
    """A new command must join the cases above (or say here why it cannot fail that way)."""
    from nlpkit.cli import build_cli

    covered = {args[0] for _, args, *_ in BAD_ARGUMENTS + MISSING_FILES + UNKNOWN_NAMES}
    covered |= {args[0] for _, args in NO_BROKER_CASES + NO_DATABASE_CASES}
    covered.add("config")  # test_a_missing_or_broken_config_file_is_one_line
    # Commands that take no input a person could get wrong beyond what click itself checks.
    exempt = {"plugins", "services"}
    ours = {name for name, command in build_cli().commands.items() if _is_nlpkits(command)}
    missing = sorted(ours - covered - exempt)
    assert not missing, f"commands without a one-line-error case: {missing}"


def _is_nlpkits(command) -> bool:
    """A command of nlpkit or its built-in plugins, not of a third-party plugin that happens to be installed."""
    module = getattr(command.callback, "__module__", "") or ""
    return module.split(".")[0] in {"nlpkit", "nlpkit_plugins"}


def test_a_missing_or_broken_config_file_is_one_line(setting, tmp_path):
    missing = error_line(run_nlpkit(setting, ["config"], NLPKIT_CONFIG="/no/such.toml"))
    assert "NLPKIT_CONFIG points at /no/such.toml" in missing
    broken = tmp_path / "nlpkit.toml"
    broken.write_text("database_url = \n")
    assert "not valid TOML" in error_line(run_nlpkit(setting, ["config"], NLPKIT_CONFIG=str(broken)))
