"""The operator's commands against a real broker and database: status, dead-letters, results."""

from __future__ import annotations

import base64
import csv
import json
import stat

import pytest
from click.testing import CliRunner
from workers import unique

from nlpkit.cli import build_cli
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.store import DeadLetterRow, PredictionRow, migrated_database
from nlpkit.store.queries import PredictionFilter, count_predictions
from nlpkit.stream.kafka_clients import create_topic, produce, read_topic
from nlpkit.stream.replay import REPLAY_HEADER
from nlpkit.stream.worker import Worker, WorkerConfig
from nlpkit_plugins.sentiment import SentimentTask

pytestmark = pytest.mark.integration

GOOD = 30
BAD = [b"\xff\xfe not utf-8", b'{"id": "x", "text": 7}', b'{"text": "unterminated']


@pytest.fixture(params=["sqlite", "postgresql"])
def consumed(request, kafka_broker, tmp_path, sentiment_model_dir, monkeypatch):
    """A topic whose messages (GOOD good, then the BAD ones) one worker has consumed into the database."""
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("ops"), unique("ops-group")
    create_topic(bootstrap, topic, partitions=2)
    good = [(f"g{i}".encode(), json.dumps({"id": f"g{i}", "text": f"review {i} good"}).encode()) for i in range(GOOD)]
    produce(bootstrap, topic, good + [(f"b{i}".encode(), value) for i, value in enumerate(BAD)])
    url = f"sqlite:///{tmp_path / 'ops.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = migrated_database(url)
    task = SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))
    config = WorkerConfig(
        topics=[topic], group=group, bootstrap_servers=bootstrap, batch_size=8, max_messages=GOOD + len(BAD)
    )
    Worker(config, {"sentiment": Engine(task)}, database).run()
    monkeypatch.setenv("NLPKIT_DATABASE_URL", url)
    monkeypatch.setenv("NLPKIT_BOOTSTRAP_SERVERS", bootstrap)
    yield {"topic": topic, "group": group, "bootstrap": bootstrap, "database": database}
    database.dispose()


def nlpkit(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_status_shows_lag_per_partition_rows_per_task_and_models(consumed):
    topic, group = consumed["topic"], consumed["group"]
    report = json.loads(nlpkit("status", "--group", group, "--json").stdout)
    partitions = report["kafka"]["partitions"]
    assert {(row["topic"], row["partition"]) for row in partitions} == {(topic, 0), (topic, 1)}
    assert all(row["lag"] == 0 and row["committed"] == row["high_watermark"] for row in partitions)
    assert sum(row["high_watermark"] for row in partitions) == GOOD + len(BAD)
    assert report["database"]["tasks"]["sentiment"] == {
        "predictions": GOOD,
        "dead_letters": len(BAD),
        "dead_letters_pending": len(BAD),
    }

    produce(consumed["bootstrap"], topic, [(None, b"three"), (None, b"more"), (None, b"reviews")])
    report = json.loads(nlpkit("status", "--group", group, "--json").stdout)
    assert sum(row["lag"] for row in report["kafka"]["partitions"]) == 3
    table = nlpkit("status", "--group", group)
    assert table.exit_code == 0
    assert all(title in table.stdout for title in ("Kafka", "Database", "sentiment", "No registered models"))


def test_status_reports_what_it_can_when_the_broker_is_unreachable(consumed):
    result = CliRunner().invoke(build_cli(), ["status", "--json", "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert "cannot reach a Kafka broker" in report["kafka"]["error"]
    assert report["database"]["tasks"]["sentiment"]["predictions"] == GOOD
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1


def test_dead_letters_list_show_and_replay_to_their_topic(consumed, tmp_path):
    letters = [json.loads(line) for line in nlpkit("dead-letters", "list", "--json").stdout.splitlines()]
    assert len(letters) == len(BAD)
    assert {base64.b64decode(letter["raw_base64"]) for letter in letters} == set(BAD)
    by_stage = nlpkit("dead-letters", "list", "--stage", "validate", "--json").stdout.splitlines()
    assert len(by_stage) == 1 and "must be a string" in json.loads(by_stage[0])["reason"]
    assert len(nlpkit("dead-letters", "list", "--stage", "decode", "--json").stdout.splitlines()) == 2
    not_utf8 = nlpkit("dead-letters", "list", "--reason", "UTF-8", "--json").stdout.splitlines()
    assert len(not_utf8) == 1

    letter_id = json.loads(not_utf8[0])["id"]
    shown = nlpkit("dead-letters", "show", str(letter_id))
    assert shown.exit_code == 0
    assert "ff fe 20 6e 6f 74" in shown.stdout  # the raw bytes, exactly
    assert "not valid UTF-8" in shown.stdout

    target = unique("replayed")
    create_topic(consumed["bootstrap"], target, partitions=1)
    replay = nlpkit("dead-letters", "replay", "--all", "--to-topic", target)
    assert replay.exit_code == 0, replay.output
    received = read_topic(consumed["bootstrap"], target, limit=100)
    assert sorted(message.value() for message in received) == sorted(BAD)
    origins = {dict(message.headers())[REPLAY_HEADER].decode() for message in received}
    assert all(origin.startswith(consumed["topic"] + "/") for origin in origins) and len(origins) == len(BAD)

    assert nlpkit("dead-letters", "list", "--not-replayed", "--json").stdout == ""
    again = nlpkit("dead-letters", "replay", "--all", "--to-topic", target)
    assert "nothing to replay" in again.stderr


def test_dead_letter_commands_refuse_unknown_ids_and_missing_selection(consumed):
    assert nlpkit("dead-letters", "show", "999999").exit_code == 1
    missing = CliRunner().invoke(build_cli(), ["dead-letters", "replay", "999999"])
    assert missing.exit_code == 1 and "no dead letter with id 999999" in missing.stderr
    nothing = CliRunner().invoke(build_cli(), ["dead-letters", "replay"])
    assert nothing.exit_code == 2 and "--all" in nothing.stderr


def test_results_filters_and_exports_match_the_database(consumed, tmp_path):
    database = consumed["database"]
    with database.session() as session:
        rows = session.query(PredictionRow).all()
        dead = session.query(DeadLetterRow).count()
    assert len(rows) == GOOD and dead == len(BAD)
    label = rows[0].label
    threshold = sorted(row.score for row in rows)[GOOD // 2]
    expected = [row for row in rows if row.label == label and row.score >= threshold]

    assert nlpkit("results", "--count").stdout.strip() == str(GOOD)
    counted = nlpkit("results", "--label", label, "--min-score", str(threshold), "--count").stdout.strip()
    assert (
        counted
        == str(len(expected))
        == str(count_predictions(database, PredictionFilter(label=label, min_score=threshold)))
    )

    lines = nlpkit("results", "--label", label, "--min-score", str(threshold)).stdout.splitlines()
    exported = [json.loads(line) for line in lines]
    assert sorted(item["record_id"] for item in exported) == sorted(row.record_id for row in expected)
    assert all(item["output"]["label"] == label and item["source_topic"] == consumed["topic"] for item in exported)

    path = tmp_path / "export.csv"
    assert nlpkit("results", "--format", "csv", "-o", str(path), "--task", "sentiment").exit_code == 0
    with path.open(newline="") as stream:
        table = list(csv.DictReader(stream))
    assert len(table) == GOOD
    assert json.loads(table[0]["output"])["label"] == table[0]["label"]
    assert not path.stat().st_mode & (stat.S_IWOTH | stat.S_IWGRP)

    assert nlpkit("results", "--since", "1h", "--count").stdout.strip() == str(GOOD)
    assert nlpkit("results", "--until", "1h", "--count").stdout.strip() == "0"
    assert nlpkit("results", "--model", "no-such-model", "--count").stdout.strip() == "0"
    bad_time = CliRunner().invoke(build_cli(), ["results", "--since", "yesterday-ish"])
    assert bad_time.exit_code == 2 and "neither an ISO date/time nor an age" in bad_time.stderr


def test_dead_letters_replayed_directly_are_stored_under_their_original_offsets(consumed, sentiment_model_dir):
    """A message that failed for a reason since fixed becomes a prediction in place; truly bad ones stay dead."""
    from nlpkit.store import utcnow

    database, topic = consumed["database"], consumed["topic"]
    recovered = {
        "task": "sentiment",
        "source_topic": topic,
        "source_partition": 0,
        "source_offset": 10_000,
        "source_key": b"late",
        "raw_value": b'{"id": "late", "text": "a fine film after all"}',
        "reason": "model failed: out of memory",
        "stage": "model",
        "message_timestamp": utcnow(),
        "stored_at": utcnow(),
        "replayed_at": None,
    }
    database.write_batch([], [recovered])
    results = unique("replayed-results")
    create_topic(consumed["bootstrap"], results, partitions=1)
    result = nlpkit(
        "dead-letters", "replay", "--all", "--direct", "--model", str(sentiment_model_dir), "--output-topic", results
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert f"replayed {len(BAD) + 1}: 1 stored, produced to '{results}', {len(BAD)} still dead letters" in said
    # The new result went out as a worker with --output-topic sends it: source key, source coordinates.
    (message,) = read_topic(consumed["bootstrap"], results, limit=100)
    headers = dict(message.headers())
    assert message.key() == b"late" and json.loads(message.value())["label"] in ("negative", "positive")
    assert (headers["nlpkit.source.topic"], headers["nlpkit.source.offset"]) == (topic.encode(), b"10000")
    with database.session() as session:
        row = session.query(PredictionRow).filter_by(record_id="late").one()
        letters = {letter.source_offset: letter for letter in session.query(DeadLetterRow)}
    assert (row.source_topic, row.source_partition, row.source_offset) == (topic, 0, 10_000)
    assert row.input_text == "a fine film after all"
    assert letters[10_000].replayed_at is not None
    assert [letter.replayed_at for offset, letter in letters.items() if offset != 10_000] == [None] * len(BAD)


def test_topics_read_shows_keys_headers_and_values_faithfully_and_joins_no_group(kafka_broker, monkeypatch):
    bootstrap = kafka_broker.bootstrap_servers
    topic = unique("read")
    create_topic(bootstrap, topic, partitions=2)
    binary_key = b"\x00\x00\x00\x00\x07\xff"  # a Schema-Registry-framed key: not text
    produce(bootstrap, topic, [(b"k1", b'{"label": "positive"}'), (binary_key, b"plain text"), (b"k3", b"\xff\xfe")])
    monkeypatch.setenv("NLPKIT_BOOTSTRAP_SERVERS", bootstrap)

    result = nlpkit("topics", "read", topic, "--limit", "10")
    assert result.exit_code == 0, result.output
    shown = sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda item: str(item["key"]))
    assert [(item["key"], item["value"]) for item in shown] == [
        ("k1", {"label": "positive"}),
        ("k3", {"base64": base64.b64encode(b"\xff\xfe").decode()}),
        ({"base64": base64.b64encode(binary_key).decode()}, "plain text"),
    ]
    assert nlpkit("topics", "read", topic, "--limit", "1").stdout.count("\n") == 1
    groups = [group.group_id for group in admin_groups(bootstrap)]
    assert "nlpkit-topics-read" not in groups  # it read without joining (or committing to) a group

    missing = CliRunner().invoke(build_cli(), ["topics", "read", unique("nope")])
    assert missing.exit_code == 1 and "no topic" in missing.stderr


def admin_groups(bootstrap: str) -> list:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap}).list_consumer_groups().result(timeout=10).valid
