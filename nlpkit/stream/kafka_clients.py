"""Kafka clients for everything but the worker loop: configuration, producing records, topics."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from nlpkit import settings
from nlpkit.errors import DataFormatError, NlpkitError
from nlpkit.tasks.readers import TEXT_COLUMNS, read_rows

Client = TypeVar("Client", AdminClient, Consumer, Producer)
Headers = dict[str, bytes]
Outgoing = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, Headers]


# librdkafka's own log lines go through this logger instead of straight to stderr, so the CLI
# decides what a person sees: a worker shows them, a one-shot command its own one-line error.
CLIENT_LOG = logging.getLogger("nlpkit.kafka")


class _RoutineRetries(logging.Filter):
    """Drops librdkafka's notice that a broker which has just started is still loading its
    transaction coordinator: the idempotent producer retries by itself within a second, so the
    line (printed once after every broker start) is noise, not something to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Coordinator load in progress" not in record.getMessage()


CLIENT_LOG.addFilter(_RoutineRetries())


def client_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for every nlpkit client: the configured pass-through properties
    (SASL, SSL, ...; see :func:`nlpkit.settings.kafka_settings`), then ``overrides``."""
    configured = {key: value for key, (value, _source) in settings.kafka_settings().items()}
    return {
        "client.id": "nlpkit",
        "logger": CLIENT_LOG,
        **configured,
        "bootstrap.servers": bootstrap_servers,
        **overrides,
    }


def new_client(kind: type[Client], config: dict[str, Any]) -> Client:
    """A librdkafka client, or one clear line when librdkafka refuses its settings.

    librdkafka checks every property, and loads files such as ``ssl.ca.location``, while
    the client is made; a mistyped name or value in nlpkit.toml or an ``NLPKIT_KAFKA_*``
    variable would otherwise end a command with a traceback.
    """
    try:
        return kind(config)
    except KafkaException as exc:
        raise NlpkitError(f"Kafka client settings refused: {exc.args[0].str()} (see `nlpkit config`)") from exc


def cluster_metadata(
    client: AdminClient | Consumer | Producer, bootstrap_servers: str, timeout: float = 10.0
) -> ClusterMetadata:
    """The cluster's metadata, or one clear line when no broker answers (not librdkafka's retry noise)."""
    try:
        return client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise NlpkitError(
            f"cannot reach a Kafka broker at {bootstrap_servers} ({exc.args[0].str()}); "
            "start one with `nlpkit services kafka start` or pass --bootstrap-servers"
        ) from exc


def admin_client(bootstrap_servers: str) -> AdminClient:
    admin = new_client(AdminClient, client_config(bootstrap_servers))
    cluster_metadata(admin, bootstrap_servers)
    return admin


def create_topic(bootstrap_servers: str, name: str, partitions: int, replication_factor: int = 1) -> bool:
    """Create a topic; False when it already exists (creating is idempotent for callers)."""
    admin = admin_client(bootstrap_servers)
    future = admin.create_topics([NewTopic(name, partitions, replication_factor)])[name]
    try:
        future.result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise NlpkitError(f"cannot create topic '{name}': {exc.args[0].str()}") from exc
    return True


def list_topics(bootstrap_servers: str) -> dict[str, int]:
    """Topic name -> partition count, leaving out Kafka's internal topics."""
    metadata = admin_client(bootstrap_servers).list_topics(timeout=10)
    return {name: len(topic.partitions) for name, topic in sorted(metadata.topics.items()) if not name.startswith("__")}


def read_topic(bootstrap_servers: str, name: str, limit: int, timeout: float = 10.0) -> list[Message]:
    """Up to ``limit`` committed messages of topic ``name``, from the start of each partition.

    Reads without joining a group or committing anything, so looking at a topic (the results
    a worker produced, say) leaves every consumer group as it was.
    """
    config = client_config(bootstrap_servers, **{"group.id": "nlpkit-topics-read", "enable.partition.eof": True})
    consumer = new_client(Consumer, config)
    try:
        topic = cluster_metadata(consumer, bootstrap_servers).topics.get(name)
        if topic is None or topic.error is not None:
            raise NlpkitError(f"no topic '{name}' at {bootstrap_servers}; see `nlpkit topics list`")
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout) for p in topic.partitions}
        pending = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(name, p, ends[p][0]) for p in pending])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and len(messages) < limit and time.monotonic() < deadline:
            for message in consumer.consume(min(500, limit - len(messages)), timeout=0.5):
                if message.error() is None:
                    messages.append(message)
                elif message.error().code() == KafkaError._PARTITION_EOF:  # past the end (and any markers)
                    pending.discard(message.partition())
        return messages[:limit]
    finally:
        consumer.close()


def file_messages(
    path: Path,
    *,
    text_column: str | None = None,
    key_field: str | None = "id",
    sample: int | None = None,
    seed: int = 0,
    encode: Callable[[dict[str, Any]], bytes] | None = None,
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs for the rows of a JSON lines, TSV or CSV file.

    Each row is sent as a JSON object whose ``text`` is the row's text column, so what a
    worker receives does not depend on the file format; or as ``encode`` makes it (an Avro
    record of the row as it is, its schema saying where the text lives). ``sample`` draws that many
    rows at random with ``seed``: several shared data files are sorted by label, so a
    prefix would not be a sample.
    """
    rows = [(number, row) for number, row in read_rows(path)]
    if sample is not None:
        if sample > len(rows):
            raise DataFormatError(f"{path}: asked for a sample of {sample} but the file has {len(rows)} rows")
        rows = random.Random(seed).sample(rows, sample)
    messages = []
    for number, row in rows:
        payload = dict(row)
        if encode is None:  # JSON: the text under "text"; an encoder's schema says where its text is
            column = text_column or next((name for name in TEXT_COLUMNS if name in row), None)
            if column not in row:
                wanted = text_column or " or ".join(TEXT_COLUMNS)
                raise DataFormatError(f"{path}:{number}: no text column ({wanted})")
            payload["text"] = payload.pop(column)
        key = payload.get(key_field) if key_field else None
        value = encode(payload) if encode else json.dumps(payload, ensure_ascii=False).encode()
        messages.append((None if key is None else str(key).encode(), value))
    return messages


def avro_encoder(topic: str, schema: Path, registry_url: str | None = None) -> Callable[[dict[str, Any]], bytes]:
    """Rows as Avro records of ``schema``, registered in the Schema Registry under the topic's
    value subject (confluent-kafka's serializer: magic byte, schema id, then the record)."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from nlpkit.stream.decoding import registry_client

    serializer = AvroSerializer(registry_client(registry_url), schema.read_text(encoding="utf-8"))
    context = SerializationContext(topic, MessageField.VALUE)
    return lambda row: serializer(row, context)


def produce(
    bootstrap_servers: str,
    topic: str,
    messages: Iterable[Outgoing],
    progress: Callable[[int], None] | None = None,
    **overrides: Any,
) -> int:
    """Send messages with an idempotent producer, wait for every acknowledgement, return the count.

    Raises NlpkitError if any message was not acknowledged, so a caller never believes
    data reached the topic when it did not. A message is ``(key, value)`` or
    ``(key, value, headers)``.
    """
    producer = new_client(
        Producer, client_config(bootstrap_servers, **{"enable.idempotence": True, "linger.ms": 5, **overrides})
    )
    cluster_metadata(producer, bootstrap_servers)  # no broker: say so now, not after a minute of retries
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())
        elif progress is not None:
            progress(1)

    sent = 0
    for key, value, *headers in messages:
        _produce_one(producer, topic, key, value, headers[0] if headers else None, on_delivery)
        sent += 1
    remaining = producer.flush(60)
    if remaining or failures:
        detail = failures[0] if failures else f"{remaining} messages still unacknowledged after 60 s"
        raise NlpkitError(f"sending to '{topic}' failed for {len(failures) or remaining} of {sent} messages: {detail}")
    return sent


def _produce_one(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    on_delivery: Callable,
) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.5)
