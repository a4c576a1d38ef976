"""What plugin authors get for their tests: run_through_worker and the pytest fixture plugin."""

from __future__ import annotations

import subprocess
import sys

import pluggy

import nlpkit.pytest_plugin
from nlpkit import hookimpl, hookspecs
from nlpkit.store import PredictionRow
from nlpkit.testing import run_through_worker

MESSAGES = [
    {"id": "json-id", "text": "a fine film"},
    ("plain-key", "plain text, the key is its id"),
    b"\xff\xfe not utf-8",
    {"id": "blank", "text": ""},
    b"",
    None,
]


class Recorder:
    """A plugin that keeps what each predictions_stored call reports."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    @hookimpl
    def predictions_stored(self, batch) -> None:
        self.batches.append((len(batch.predictions), len(batch.dead_letters)))


def recording_hook(recorder: Recorder):
    manager = pluggy.PluginManager("nlpkit")
    manager.add_hookspecs(hookspecs)
    manager.register(recorder)
    return manager.hook


def test_messages_become_the_rows_a_worker_stores(sentiment_model_dir):
    run = run_through_worker("sentiment", sentiment_model_dir, MESSAGES, device="cpu")

    assert [(row["record_id"], row["source_offset"], row["source_key"]) for row in run.predictions] == [
        ("json-id", 0, None),
        ("plain-key", 1, b"plain-key"),
    ]
    assert [row["source_key_text"] for row in run.predictions] == [None, "plain-key"]
    first = run.predictions[0]
    assert (first["task"], first["model_name"], first["backend"]) == ("sentiment", str(sentiment_model_dir), "torch")
    assert (first["source_topic"], first["source_partition"], first["input_text"]) == ("nlpkit-test", 0, "a fine film")
    assert first["message_timestamp"] is not None and first["stored_at"] is not None
    assert run.outputs == [row["output"] for row in run.predictions]
    assert set(run.outputs[0]) == {"label", "score", "scores", "truncated"}
    assert [(row["source_offset"], row["stage"]) for row in run.dead_letters] == [
        (2, "decode"),
        (3, "validate"),
        (4, "decode"),
    ]
    reasons = [row["reason"] for row in run.dead_letters]
    assert "not valid UTF-8" in reasons[0] and reasons[1:] == ["field 'text' is empty", "empty value (0 bytes)"]
    assert run.dead_letters[0]["raw_value"] == b"\xff\xfe not utf-8"
    assert [row["source_offset"] for row in run.tombstones] == [5]  # a null value: recorded, not a dead letter


def test_tombstones_can_be_kept_as_dead_letters(sentiment_model_dir):
    run = run_through_worker("sentiment", sentiment_model_dir, [None], tombstones="dead-letter", device="cpu")
    assert run.tombstones == []
    assert [(row["stage"], row["reason"], row["raw_value"]) for row in run.dead_letters] == [
        ("tombstone", "tombstone (null value)", None)
    ]


def test_batches_are_transactions_reported_to_the_hook_and_replays_overwrite(sentiment_model_dir, nlpkit_database):
    recorder = Recorder()
    hook = recording_hook(recorder)
    options = {"database_url": nlpkit_database.url, "batch_size": 2, "hook": hook, "device": "cpu"}

    run_through_worker("sentiment", sentiment_model_dir, MESSAGES, **options)
    assert recorder.batches == [(2, 0), (0, 2), (0, 1)]
    replay = run_through_worker("sentiment", sentiment_model_dir, MESSAGES, **options)

    assert (len(replay.predictions), len(replay.dead_letters), len(replay.tombstones)) == (2, 3, 1)
    assert nlpkit_database.count(PredictionRow) == 2  # same topic and offsets: upserted, not duplicated


def test_a_model_registered_in_the_given_database_is_found_by_name(sentiment_model_dir, nlpkit_database):
    nlpkit_database.models.register(name="tiny", task="sentiment", path=sentiment_model_dir, revision="r1")
    run = run_through_worker(
        "sentiment", "tiny", ["good"], database_url=nlpkit_database.url, topic="reviews", device="cpu"
    )
    assert [(row["model_name"], row["source_topic"]) for row in run.predictions] == [("tiny", "reviews")]


def test_the_fixture_plugin_is_loaded_through_its_pytest11_entry_point(pytestconfig):
    assert pytestconfig.pluginmanager.get_plugin("nlpkit") is nlpkit.pytest_plugin


def test_the_fixture_plugin_imports_nothing_heavy_when_pytest_starts():
    heavy = ("torch", "transformers", "confluent_kafka", "sqlalchemy")
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, nlpkit.pytest_plugin; print([m for m in {heavy!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_nlpkit_database_is_a_migrated_sqlite_database_of_the_tests_own(nlpkit_database, tmp_path):
    nlpkit_database.check_schema()  # raises when migrations are missing
    assert nlpkit_database.url == f"sqlite:///{tmp_path / 'nlpkit.db'}"
