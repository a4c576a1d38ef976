"""Predictions out to a topic: with the database (at least once, never lost) and without it
(one Kafka transaction per batch: exactly once for a read_committed consumer), also when the
worker is killed mid-stream; source headers travel; dead letters carry Connect's error headers."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
from confluent_kafka import Consumer
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from sqlalchemy import func, select
from workers import caught_up, committed_and_end, good_message, migrated, start_worker, stop, unique, wait_for

from nlpkit.inference import Engine
from nlpkit.pipelines import load_task
from nlpkit.store import PredictionRow
from nlpkit.stream.decoding import registry_client
from nlpkit.stream.kafka_clients import create_topic, produce
from nlpkit.stream.worker import Worker, WorkerConfig

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RESULT_SCHEMA = {
    "type": "record",
    "name": "SentimentResult",
    "fields": [
        {"name": "label", "type": "string"},
        {"name": "score", "type": "double"},
        {"name": "scores", "type": {"type": "map", "values": "double"}},
        {"name": "truncated", "type": "boolean"},
    ],
}


def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 60) -> list:
    """Every message of ``topic`` a read_committed consumer sees, once ``at_least`` have arrived and
    two quiet seconds have passed (so that duplicates, if any, are seen too)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("reader"), "auto.offset.reset": "earliest",
         "isolation.level": "read_committed", "enable.auto.commit": False}
    )  # fmt: skip
    consumer.subscribe([topic])
    received, deadline, quiet_since = [], time.monotonic() + timeout, time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(500, 1.0) if m.error() is None]
            received += batch
            quiet_since = time.monotonic() if batch else quiet_since
            if len(received) >= at_least and time.monotonic() - quiet_since > 2:
                break
    finally:
        consumer.close()
    return received


def headers_of(message) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers() or []}


def source_offsets(results) -> list[tuple[int, int]]:
    return sorted(
        (int(headers_of(m)["nlpkit.source.partition"]), int(headers_of(m)["nlpkit.source.offset"])) for m in results
    )


def test_each_prediction_becomes_a_result_with_its_key_output_and_where_it_came_from(
    kafka_broker, tmp_path, sentiment_model_dir
):
    bootstrap = kafka_broker.bootstrap_servers
    topic, output, dead = (unique(name) for name in ("reviews", "results", "dead"))
    for name in (topic, output, dead):
        create_topic(bootstrap, name, partitions=1)
    traced = {"traceparent": TRACEPARENT.encode(), "tracestate": b"vendor=1", "other": b"not passed"}
    produce(bootstrap, topic, [(b"k0", b"a fine film", traced), (b"\x00\x01binary", b"dull film"), (b"k2", b"")])
    database = migrated(f"sqlite:///{tmp_path / 'out.db'}")
    config = WorkerConfig(topics=[topic], group=unique("g"), bootstrap_servers=bootstrap, max_messages=3,
                          output_topic=output, dead_letter_topic=dead)  # fmt: skip
    Worker(config, {"sentiment": Engine(load_task("sentiment", str(sentiment_model_dir)))}, database).run()

    results = read_topic(bootstrap, output, at_least=2)
    with database.session() as session:
        stored = session.scalars(select(PredictionRow).order_by(PredictionRow.source_offset)).all()
    assert [m.key() for m in results] == [b"k0", b"\x00\x01binary"]  # the source key, byte for byte
    assert [json.loads(m.value()) for m in results] == [row.output for row in stored]
    first = headers_of(results[0])
    assert first == {
        "nlpkit.task": "sentiment",
        "nlpkit.model": str(sentiment_model_dir),
        "nlpkit.model.revision": stored[0].model_revision,
        "nlpkit.backend": "torch",
        "nlpkit.source.topic": topic,
        "nlpkit.source.partition": "0",
        "nlpkit.source.offset": "0",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
    }
    assert stored[0].headers == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"} and stored[1].headers is None
    [letter] = read_topic(bootstrap, dead, at_least=1)
    assert (letter.key(), letter.value()) == (b"k2", b"")
    assert headers_of(letter) == {
        "__connect.errors.topic": topic,
        "__connect.errors.partition": "0",
        "__connect.errors.offset": "2",
        "__connect.errors.stage": "decode",
        "__connect.errors.exception.message": "empty value (0 bytes)",
        "__connect.errors.connector.name": "nlpkit-sentiment",
    }
    database.dispose()


def test_results_can_be_avro_records_of_a_registered_schema(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap = kafka_broker.bootstrap_servers
    topic, output = (unique(name) for name in ("reviews", "avro-results"))
    create_topic(bootstrap, topic, partitions=1)
    create_topic(bootstrap, output, partitions=1)
    produce(bootstrap, topic, [(b"k", b"a fine film"), (b"l", b"a dull film")])
    schema = tmp_path / "result.avsc"
    schema.write_text(json.dumps(RESULT_SCHEMA))
    registry_url = f"mock://results-{uuid.uuid4().hex[:8]}"
    database = migrated(f"sqlite:///{tmp_path / 'avro-out.db'}")
    config = WorkerConfig(topics=[topic], group=unique("g"), bootstrap_servers=bootstrap, max_messages=2,
                          output_topic=output, output_format="avro", output_schema=schema,
                          schema_registry=registry_url)  # fmt: skip
    Worker(config, {"sentiment": Engine(load_task("sentiment", str(sentiment_model_dir)))}, database).run()

    decode = AvroDeserializer(registry_client(registry_url))
    results = read_topic(bootstrap, output, at_least=2)
    decoded = [decode(m.value(), SerializationContext(output, MessageField.VALUE)) for m in results]
    with database.session() as session:
        stored = session.scalars(select(PredictionRow.output).order_by(PredictionRow.source_offset)).all()
    assert decoded == stored and all(m.value()[:1] == b"\x00" for m in results)
    database.dispose()


def killed_and_restarted(bootstrap, topic, group, url, model, extra, stored_so_far, total: int) -> None:
    """A worker SIGKILLed mid-stream (fewer than ``total`` results stored), then a second one run
    until the group's lag is 0.

    Right after the kill the group's committed offsets may not be readable: a transaction the
    killed worker left open holds them until the broker times it out, so progress is judged
    by what was stored, and the second worker is given time for that."""
    first = start_worker(topic, group, bootstrap, url, model, "--batch-size", "10", *extra)
    wait_for(lambda: stored_so_far() >= 100, 120, "the first results", [first])
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert stored_so_far() < total, "the worker finished before it was killed: this proves nothing"
    second = start_worker(topic, group, bootstrap, url, model, "--batch-size", "50", *extra)
    wait_for(lambda: caught_up(bootstrap, group, topic, 2), 180, "offsets to reach the end", [second])
    stop(second)


def test_killed_with_a_database_a_result_may_repeat_but_none_is_lost(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap = kafka_broker.bootstrap_servers
    topic, output, group = (unique(name) for name in ("kill-db", "results", "group"))
    create_topic(bootstrap, topic, partitions=2)
    create_topic(bootstrap, output, partitions=2)
    produce(bootstrap, topic, [good_message(i) for i in range(600)])
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    database = migrated(url)

    def stored() -> int:
        with database.session() as session:
            return int(session.scalar(select(func.count()).select_from(PredictionRow)))

    killed_and_restarted(bootstrap, topic, group, url, sentiment_model_dir, ["--output-topic", output], stored, 600)

    assert stored() == 600  # the database: exactly once
    ends = committed_and_end(bootstrap, group, topic, 2)[1]
    offsets = source_offsets(read_topic(bootstrap, output, at_least=600))
    assert set(offsets) == {(p, o) for p in range(2) for o in range(ends[p])}  # every result, some maybe twice
    database.dispose()


def test_killed_without_a_database_each_result_is_seen_exactly_once(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap = kafka_broker.bootstrap_servers
    topic, output, dead, group = (unique(name) for name in ("kill-tx", "results", "dead", "group"))
    for name in (topic, output, dead):
        create_topic(bootstrap, name, partitions=2)
    messages = [good_message(i) for i in range(3000)]  # enough that the kill comes mid-stream
    for index in range(5, 3000, 50):  # a dead letter in every 50: they commit with the results
        messages[index] = (messages[index][0], b"\xff\xfe not utf-8")
    produce(bootstrap, topic, messages)
    url = f"sqlite:///{tmp_path / 'unused.db'}"  # --no-store touches no database

    def committed_results() -> int:
        return len(read_topic(bootstrap, output, at_least=10**9, timeout=1))

    extra = ["--no-store", "--output-topic", output, "--dead-letter-topic", dead]
    killed_and_restarted(bootstrap, topic, group, url, sentiment_model_dir, extra, committed_results, 2940)

    results = source_offsets(read_topic(bootstrap, output, at_least=2940))
    letters = read_topic(bootstrap, dead, at_least=60)
    assert len(results) == len(set(results)) == 2940  # exactly once: no repeat, nothing lost
    assert len(letters) == 60 and {m.value() for m in letters} == {b"\xff\xfe not utf-8"}
    assert not (tmp_path / "unused.db").exists()
