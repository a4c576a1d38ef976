"""Schema Registry records in: Avro, JSON Schema and Protobuf values on the real broker.

The registry is confluent-kafka's in-process one (``mock://``: real wire format, real schema
ids, real serializers), reached through exactly the code a URL takes (``registry_client``).
Set ``NLPKIT_TEST_SCHEMA_REGISTRY_URL`` to run the same tests against a real registry.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from sqlalchemy import select
from workers import migrated, unique

from nlpkit.cli import build_cli
from nlpkit.inference import Engine
from nlpkit.pipelines import load_task
from nlpkit.store import DeadLetterRow, PredictionRow
from nlpkit.stream.decoding import registry_client
from nlpkit.stream.kafka_clients import create_topic, produce
from nlpkit.stream.worker import Worker, WorkerConfig

pytestmark = pytest.mark.integration

REVIEW_AVRO = {
    "type": "record",
    "name": "Review",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "string"},
        {
            "name": "review",
            "type": {"type": "record", "name": "Body", "fields": [{"name": "body", "type": "string"}]},
        },
        {"name": "stars", "type": "int"},
    ],
}
OTHER_AVRO = {"type": "record", "name": "Rating", "namespace": "shop", "fields": [{"name": "stars", "type": "int"}]}
REVIEW_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "review": {"type": "object", "properties": {"body": {"type": "string"}}, "required": ["body"]},
    },
    "required": ["id", "review"],
}
REVIEWS = [(f"r{i}", f"review number {i}: a {'fine' if i % 2 else 'dull'} film") for i in range(6)]


@pytest.fixture
def registry_url() -> str:
    return os.environ.get("NLPKIT_TEST_SCHEMA_REGISTRY_URL") or f"mock://nlpkit-{uuid.uuid4().hex[:8]}"


def consume(bootstrap: str, topic: str, database, model_dir, count: int, registry_url: str, **settings):
    config = WorkerConfig(
        topics=[topic],
        group=unique("group"),
        bootstrap_servers=bootstrap,
        max_messages=count,
        schema_registry=registry_url,
        **{"fields": {"text": "review.body"}, **settings},
    )
    return Worker(config, {"sentiment": Engine(load_task("sentiment", str(model_dir)))}, database).run()


def rows(database) -> tuple[list, list]:
    with database.session() as session:
        predictions = session.scalars(select(PredictionRow).order_by(PredictionRow.source_offset)).all()
        letters = session.scalars(select(DeadLetterRow).order_by(DeadLetterRow.source_offset)).all()
    return predictions, letters


def framed(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + payload


def test_avro_values_are_decoded_mapped_and_stored_with_their_schema_id(
    kafka_broker, tmp_path, sentiment_model_dir, registry_url
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("avro")
    registry = registry_client(registry_url)
    serializer = AvroSerializer(registry, json.dumps(REVIEW_AVRO))
    other = AvroSerializer(
        registry, json.dumps(OTHER_AVRO), conf={"subject.name.strategy": record_subject_name_strategy}
    )
    context = SerializationContext(topic, MessageField.VALUE)
    good = [serializer({"id": rid, "review": {"body": text}, "stars": 4}, context) for rid, text in REVIEWS]
    schema_id = int.from_bytes(good[0][1:5], "big")
    bad = [
        framed(987_654, good[0][5:]),  # no such schema
        framed(schema_id, b"\x08"),  # cut short: not a Review
        other({"stars": 2}, context),  # decodes, but has no review.body
    ]
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, [(rid.encode(), value) for (rid, _), value in zip(REVIEWS, good, strict=True)])
    produce(bootstrap, topic, [(b"bad", value) for value in bad])
    database = migrated(f"sqlite:///{tmp_path / 'avro.db'}")

    stats = consume(bootstrap, topic, database, sentiment_model_dir, len(good) + len(bad), registry_url)

    predictions, letters = rows(database)
    assert (stats.predictions, stats.dead_letters) == (len(good), len(bad))
    assert [(row.record_id, row.input_text, row.schema_id) for row in predictions] == [
        (rid, text, schema_id) for rid, text in REVIEWS
    ]
    reasons = [letter.reason for letter in letters]
    assert reasons[0] == "unknown schema id 987654"
    assert reasons[1].startswith(f"undecodable AVRO record (schema id {schema_id})")
    assert reasons[2] == "missing field 'review.body'"
    assert [letter.raw_value for letter in letters] == bad  # kept byte for byte, for replay
    database.dispose()


def review_protobuf_class():
    """A Protobuf message type built at run time, as a producer's generated code would define it."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"review_{uuid.uuid4().hex[:6]}.proto", package="shop", syntax="proto3"
    )
    body = file.message_type.add(name="Body")
    body.field.add(name="body", number=1, type=9, label=1)  # string
    review = file.message_type.add(name="Review")
    review.field.add(name="id", number=1, type=9, label=1)
    review.field.add(name="review", number=2, type=11, label=1, type_name=".shop.Body")  # message
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    return GetMessageClass(pool.FindMessageTypeByName("shop.Review"))


@pytest.mark.parametrize("kind", ["jsonschema", "protobuf"])
def test_json_schema_and_protobuf_values_are_decoded_too(
    kafka_broker, tmp_path, sentiment_model_dir, registry_url, kind
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique(kind)
    registry = registry_client(registry_url)
    context = SerializationContext(topic, MessageField.VALUE)
    if kind == "jsonschema":
        serializer = JSONSerializer(json.dumps(REVIEW_JSON_SCHEMA), registry)
        values = [serializer({"id": rid, "review": {"body": text}}, context) for rid, text in REVIEWS]
    else:
        review = review_protobuf_class()
        serializer = ProtobufSerializer(review, registry, {"use.deprecated.format": False})
        values = [serializer(review(id=rid, review={"body": text}), context) for rid, text in REVIEWS]
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, [(None, value) for value in values])
    database = migrated(f"sqlite:///{tmp_path / 'formats.db'}")

    stats = consume(bootstrap, topic, database, sentiment_model_dir, len(values), registry_url, value_format=kind)

    predictions, _letters = rows(database)
    assert (stats.predictions, stats.dead_letters) == (len(values), 0)
    assert [(row.record_id, row.input_text) for row in predictions] == REVIEWS
    assert {row.schema_id for row in predictions} == {int.from_bytes(values[0][1:5], "big")}


def test_send_produces_avro_from_a_schema_file_that_consume_reads(
    kafka_broker, tmp_path, sentiment_model_dir, registry_url, monkeypatch
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("sent-avro")
    schema = tmp_path / "review.avsc"
    schema.write_text(json.dumps(REVIEW_AVRO))
    data = tmp_path / "reviews.jsonl"
    data.write_text(
        "".join(json.dumps({"id": rid, "review": {"body": text}, "stars": 5}) + "\n" for rid, text in REVIEWS)
    )
    create_topic(bootstrap, topic, partitions=1)
    url = f"sqlite:///{tmp_path / 'sent.db'}"
    migrated(url).dispose()
    monkeypatch.setenv("NLPKIT_DATABASE_URL", url)
    cli = build_cli()
    sent = CliRunner().invoke(
        cli,
        ["send", "--topic", topic, str(data), "--bootstrap-servers", bootstrap,
         "--value-format", "avro", "--schema", str(schema), "--schema-registry", registry_url],
    )  # fmt: skip
    assert sent.exit_code == 0, sent.output
    consumed = CliRunner().invoke(
        cli,
        ["consume", "--topic", topic, "--task", "sentiment", "--model", str(sentiment_model_dir),
         "--bootstrap-servers", bootstrap, "--max-messages", str(len(REVIEWS)),
         "--schema-registry", registry_url, "--field", "text=review.body"],
    )  # fmt: skip
    assert consumed.exit_code == 0, consumed.output
    listed = CliRunner().invoke(cli, ["results", "--topic", topic]).stdout.splitlines()
    assert [(row["record_id"], row["input_text"]) for row in map(json.loads, listed)] == REVIEWS
    assert all(json.loads(line)["schema_id"] is not None for line in listed)


def test_replay_direct_reads_dead_letters_as_a_worker_told_the_right_fields_would(
    kafka_broker, tmp_path, sentiment_model_dir, registry_url, monkeypatch
):
    bootstrap, topic = kafka_broker.bootstrap_servers, unique("replay-avro")
    registry = registry_client(registry_url)
    serializer = AvroSerializer(registry, json.dumps(REVIEW_AVRO))
    context = SerializationContext(topic, MessageField.VALUE)
    values = [serializer({"id": rid, "review": {"body": text}, "stars": 3}, context) for rid, text in REVIEWS]
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, [(None, value) for value in values])
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    database = migrated(url)
    # A worker started without the field map finds no text in these records.
    consume(bootstrap, topic, database, sentiment_model_dir, len(values), registry_url, fields={})
    assert {letter.reason for letter in rows(database)[1]} == {"missing field 'text'"}

    monkeypatch.setenv("NLPKIT_DATABASE_URL", url)
    replayed = CliRunner().invoke(
        build_cli(),
        ["dead-letters", "replay", "--all", "--direct", "--model", str(sentiment_model_dir),
         "--schema-registry", registry_url, "--field", "text=review.body"],
    )  # fmt: skip

    assert replayed.exit_code == 0, replayed.output
    predictions, letters = rows(database)
    assert [(row.record_id, row.input_text, row.source_offset) for row in predictions] == [
        (rid, text, offset) for offset, (rid, text) in enumerate(REVIEWS)
    ]
    assert all(letter.replayed_at is not None for letter in letters)
    database.dispose()
