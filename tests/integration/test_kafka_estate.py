"""What real producers send, against the real broker: transactions, binary keys, tombstones.

Producers in a real Kafka estate commit and abort transactions, key their records with
bytes (UUIDs, Schema Registry frames that start with a zero byte) and delete keys on
compacted topics with null values. Each must be stored faithfully, and none may leave a
lag that never drains.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
import uuid

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from sqlalchemy import select
from workers import migrated, unique, wait_for

from nlpkit.cli import build_cli
from nlpkit.inference.engine import Engine
from nlpkit.pipelines import load_task
from nlpkit.store import DeadLetterRow, PredictionRow, TombstoneRow
from nlpkit.stream.kafka_clients import create_topic, produce
from nlpkit.stream.lag import consumer_lag
from nlpkit.stream.monitoring import WorkerMetrics
from nlpkit.stream.worker import Worker, WorkerConfig

pytestmark = pytest.mark.integration

SCHEMA_REGISTRY_KEY = b"\x00\x00\x00\x00\x2a\x06abc"  # magic byte 0, schema id 42, an Avro string "abc"
UUID_KEY = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").bytes
BINARY_KEYS = [SCHEMA_REGISTRY_KEY, UUID_KEY, b"nul\x00inside", b"\xff\xfe not utf-8", "clé-7".encode(), None]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'estate.db'}"
    return request.getfixturevalue("postgres_url")


def sentiment_worker(bootstrap, topic, database, model_dir, **settings) -> Worker:
    config = WorkerConfig(topics=[topic], group=unique("group"), bootstrap_servers=bootstrap, **settings)
    return Worker(config, {"sentiment": Engine(load_task("sentiment", str(model_dir)))}, database)


def lag_of(bootstrap: str, group: str, topic: str) -> list[int]:
    return [row.lag for row in consumer_lag(bootstrap, groups=[group], topics=[topic])]


def run_until_drained(worker: Worker, topic: str, timeout: float = 120) -> None:
    """Run the worker in a thread until its group's lag on ``topic`` is 0 everywhere, then stop it."""
    bootstrap, group = worker.config.bootstrap_servers, worker.config.group
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: set(lag_of(bootstrap, group, topic)) == {0}, timeout, f"the lag on {topic} to drain")
    finally:
        worker.request_stop()
        thread.join(60)


def test_offsets_reach_the_end_of_topics_written_in_committed_and_aborted_transactions(
    kafka_broker, database_url, sentiment_model_dir
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("transactions")
    create_topic(bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique("producer")})
    producer.init_transactions()
    committed = []
    for number in range(12):  # every third transaction aborted; the last one (11) too, so a tail is aborted
        aborted = number % 3 == 2 or number == 11
        producer.begin_transaction()
        for index in range(5):
            record = {"id": f"t{number}-{index}", "text": f"review {index} of transaction {number}, a fine film"}
            producer.produce(topic, json.dumps(record).encode(), key=record["id"].encode(), partition=index % 3)
        if aborted:
            producer.abort_transaction()
        else:
            producer.commit_transaction()
            committed += [f"t{number}-{index}" for index in range(5)]
    producer.flush()
    database = migrated(database_url)
    worker = sentiment_worker(bootstrap, topic, database, sentiment_model_dir, batch_size=7)

    run_until_drained(worker, topic)

    with database.session() as session:
        stored = session.scalars(select(PredictionRow.record_id)).all()
    assert sorted(stored) == sorted(committed)  # exactly the committed messages, each once
    assert worker.stats.dead_letters == 0
    rows = consumer_lag(bootstrap, groups=[worker.config.group], topics=[topic])
    # Markers and aborted records take offsets too: the committed offset is past them, at the end.
    assert all(row.committed == row.high_watermark for row in rows)
    assert sum(row.high_watermark for row in rows) > len(committed)
    database.dispose()


def test_binary_keys_are_stored_byte_for_byte_and_never_dead_letter_a_message(
    kafka_broker, database_url, sentiment_model_dir, monkeypatch
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("keys")
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, [(key, f"review {i}: a fine film".encode()) for i, key in enumerate(BINARY_KEYS)])
    database = migrated(database_url)
    worker = sentiment_worker(bootstrap, topic, database, sentiment_model_dir, max_messages=len(BINARY_KEYS))

    before = time.perf_counter()
    stats = worker.run()

    assert (stats.predictions, stats.dead_letters) == (len(BINARY_KEYS), 0)
    # When the partition was assigned, then when the last offsets were committed: what the bench times.
    assert before < stats.assigned_at < stats.committed_at < time.perf_counter()
    with database.session() as session:
        rows = session.execute(
            select(PredictionRow.source_key, PredictionRow.source_key_text, PredictionRow.record_id).order_by(
                PredictionRow.source_offset
            )
        ).all()
    assert [row.source_key for row in rows] == BINARY_KEYS
    assert [row.source_key_text for row in rows] == [None, None, None, None, "clé-7", None]
    assert [row.record_id for row in rows] == [None, None, None, None, "clé-7", None]

    monkeypatch.setenv("NLPKIT_DATABASE_URL", database_url)
    cli = build_cli()
    lines = CliRunner().invoke(cli, ["results", "--topic", topic], catch_exceptions=False).stdout.splitlines()
    exported = [json.loads(line)["source_key"] for line in lines]
    assert [decoded_key(key) for key in exported] == BINARY_KEYS
    assert exported[4] == "clé-7" and exported[0] == {"base64": base64.b64encode(SCHEMA_REGISTRY_KEY).decode()}
    table = CliRunner().invoke(cli, ["results", "--topic", topic, "--format", "csv"], catch_exceptions=False).stdout
    assert [row["source_key"] for row in csv.DictReader(io.StringIO(table))] == ["", "", "", "", "clé-7", ""]
    database.dispose()


def decoded_key(exported: str | dict | None) -> bytes | None:
    """The key bytes back from ``nlpkit results`` JSON: text as UTF-8, the base64 marker decoded."""
    if exported is None:
        return None
    return base64.b64decode(exported["base64"]) if isinstance(exported, dict) else exported.encode()


def test_tombstones_are_skipped_and_counted_and_empty_values_are_dead_letters(
    kafka_broker, database_url, sentiment_model_dir, monkeypatch
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("compacted")
    create_topic(bootstrap, topic, partitions=2)
    sent = [(b"a", b"a fine film"), (b"a", None), (b"b", b""), (UUID_KEY, None), (b"c", b"dull"), (None, None)]
    produce(bootstrap, topic, sent)
    database = migrated(database_url)
    metrics = WorkerMetrics()
    worker = sentiment_worker(bootstrap, topic, database, sentiment_model_dir, max_messages=len(sent))
    worker.metrics = metrics

    stats = worker.run()

    assert (stats.predictions, stats.dead_letters, stats.tombstones) == (2, 1, 3)
    assert metrics.registry.get_sample_value("nlpkit_tombstones_total", {"topic": topic}) == 3
    with database.session() as session:
        keys = sorted(session.scalars(select(TombstoneRow.source_key)), key=lambda key: key or b"")
        letter = session.scalars(select(DeadLetterRow)).one()
    assert keys == sorted([b"a", UUID_KEY, None], key=lambda key: key or b"")
    assert (letter.reason, letter.raw_value, letter.source_key) == ("empty value (0 bytes)", b"", b"b")

    monkeypatch.setenv("NLPKIT_DATABASE_URL", database_url)
    monkeypatch.setenv("NLPKIT_BOOTSTRAP_SERVERS", bootstrap)
    shown = CliRunner().invoke(build_cli(), ["status", "--topic", topic, "--json"], catch_exceptions=False).stdout
    assert json.loads(shown)["database"]["tombstones"] == {topic: 3}
    database.dispose()


def test_tombstones_become_dead_letters_when_asked(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("compacted")
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, [(b"gone", None), (b"kept", b"a fine film")])
    database = migrated(f"sqlite:///{tmp_path / 'tombstones.db'}")
    worker = sentiment_worker(bootstrap, topic, database, sentiment_model_dir, max_messages=2, tombstones="dead-letter")

    stats = worker.run()

    assert (stats.predictions, stats.dead_letters, stats.tombstones) == (1, 1, 0)
    with database.session() as session:
        letter = session.scalars(select(DeadLetterRow)).one()
    assert (letter.stage, letter.reason, letter.source_key, letter.raw_value) == (
        "tombstone",
        "tombstone (null value)",
        b"gone",
        None,
    )
    assert database.count(TombstoneRow) == 0
    database.dispose()
