"""Kafka clients for everything but the worker loop: configuration, the refusals no retry cures,
producing records, topics."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
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
    (SASL, SSL, ...; see :func:`nlpkit.settings.kafka_settings`), then ``overrides``.

    Its ``error_cb`` raises a :func:`refusal` out of the poll, consume or flush that served
    it, and hands any other error on to an ``error_cb`` among the overrides (else logs it,
    as librdkafka does without one).
    """
    configured = {key: value for key, (value, _source) in settings.kafka_settings().items()}
    config = {
        "client.id": "nlpkit",
        "logger": CLIENT_LOG,
        **configured,
        "bootstrap.servers": bootstrap_servers,
        **overrides,
    }
    config["error_cb"] = _error_handler(config, overrides.get("error_cb"))
    return config


def _error_handler(config: Mapping[str, Any], then: Callable[[KafkaError], None] | None) -> Callable:
    def on_error(error: KafkaError) -> None:
        raise_refusal(error, config)
        if then is not None:
            then(error)
        else:
            CLIENT_LOG.error("ERROR %s", error.str())

    return on_error


class KafkaRefusal(NlpkitError):
    """Kafka refused this client: its login, the broker's certificate, or an ACL. No retry cures it."""


def refusal(error: KafkaError, config: Mapping[str, Any], topic: str | None = None) -> KafkaRefusal | None:
    """The one line for an error no retry cures, or None for any other error.

    librdkafka retries a refused login or certificate forever (an error event every few hundred
    milliseconds) and reports a missing ACL for each request, so these end a command instead:
    each names the user (never the password) and the setting or ACL to look at. ``config`` is
    the client's (see :func:`client_config`); a client with a ``group.id`` reads topics, any
    other writes them.
    """
    code, detail = error.code(), error.str()
    user = config.get("sasl.username")
    who = f"user '{user}'" if user else "this client (no sasl.username)"
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        mechanism = config.get("sasl.mechanism") or config.get("sasl.mechanisms") or "GSSAPI"
        return KafkaRefusal(
            f"Kafka refused the credentials of {who} (SASL {mechanism} authentication failed); "
            "check sasl.username and sasl.password"
        )
    if code == KafkaError._SSL:
        if "certificate verify failed" in detail:
            ca = config.get("ssl.ca.location")
            trusting = f"ssl.ca.location {ca}" if ca else "the system's CA certificates (set ssl.ca.location)"
            return KafkaRefusal(f"the broker's certificate is not trusted by {trusting} (SSL handshake failed)")
        return KafkaRefusal(f"the TLS handshake with the broker failed: {detail}")
    # An idempotent producer whose user may write no topic at all is refused its producer id.
    no_producer_id = code == KafkaError.CLUSTER_AUTHORIZATION_FAILED and "idempotence" in detail
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED or (no_producer_id and topic):
        action = "read" if "group.id" in config else "write to"
        target = f"topic '{topic}'" if topic else "one of its topics"
        return KafkaRefusal(f"{who} may not {action} {target} (missing ACL)")
    if no_producer_id:
        return KafkaRefusal(
            f"{who} may not produce (missing ACL: WRITE on a topic, or IDEMPOTENT_WRITE on the cluster)"
        )
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        group = config.get("group.id")
        return KafkaRefusal(f"{who} may not use consumer group '{group}' (missing ACL: READ on the group)")
    if code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        transactional_id = config.get("transactional.id")
        return KafkaRefusal(f"{who} may not use transactional id '{transactional_id}' (missing ACL: WRITE on it)")
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        return KafkaRefusal(f"{who} was refused an operation on the cluster (missing ACL): {detail}")
    return None


def raise_refusal(error: KafkaError | None, config: Mapping[str, Any], topic: str | None = None) -> None:
    """Raise the :func:`refusal` ``error`` is, if it is one."""
    refused = None if error is None else refusal(error, config, topic)
    if refused is not None:
        raise refused


def delivery_reports(
    config: Mapping[str, Any], topic: str, failures: list[str], delivered: Callable[[int], None] | None = None
) -> Callable[[Any, Any], None]:
    """An ``on_delivery`` callback for messages to ``topic``: each failure is added to ``failures``,
    and the first, if it is a :func:`refusal`, raises its line out of the poll or flush that served
    it; each message delivered is counted to ``delivered``."""

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        if error is None:
            if delivered is not None:
                delivered(1)
            return
        failures.append(error.str())
        if len(failures) == 1:
            raise_refusal(error, config, topic)

    return on_delivery


@contextmanager
def refusals_raised(producer: Producer, config: Mapping[str, Any], topic: str) -> Iterator[None]:
    """Around producing: a refusal that comes as an exception raises its one line instead.

    That is how an idempotent producer's fatal error arrives (no ACL lets the user produce):
    ``poll`` raises it, ``produce`` raises a bare "fatal error" (a poll then tells which), and
    ``flush`` a SystemError caused by it (a flaw of confluent-kafka's).
    """
    try:
        yield
    except (KafkaException, SystemError) as exc:
        cause = exc if isinstance(exc, KafkaException) else exc.__cause__
        if not isinstance(cause, KafkaException):
            raise
        error = cause.args[0]
        if error.code() == KafkaError._FATAL:
            try:
                producer.poll(0)
            except KafkaException as fatal:
                error = fatal.args[0]
        raise_refusal(error, config, topic)
        raise


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
    """The cluster's metadata, or one clear line when no broker answers (not librdkafka's retry noise).

    Asked for in attempts of a second, with a poll between them: librdkafka tells of a refused
    login or certificate only through an error event, which the poll serves, so the refusal
    ends this within a second or two rather than as "cannot reach" after ``timeout``. (A
    consumer is asked before it subscribes, when a poll has no messages to hand over.)
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        except KafkaException as exc:
            client.poll(0)  # serves the error events: a refusal raises its line here (see client_config)
            if time.monotonic() >= deadline:
                raise NlpkitError(
                    f"cannot reach a Kafka broker at {bootstrap_servers} ({exc.args[0].str()}); "
                    "start one with `nlpkit services kafka start` or pass --bootstrap-servers"
                ) from exc


def check_topic_access(consumer: Consumer, config: Mapping[str, Any], topic: str) -> None:
    """Raise a topic the cluster's metadata left out because this user may not read it as that
    :func:`refusal` (a user sees only the topics it may describe, so it looks like a missing one)."""
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    except KafkaException:
        return  # the caller's own account of the missing topic stands
    raise_refusal(metadata.error if metadata is not None else None, config, topic)


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
            check_topic_access(consumer, config, name)
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
    config = client_config(bootstrap_servers, **{"enable.idempotence": True, "linger.ms": 5, **overrides})
    producer = new_client(Producer, config)
    cluster_metadata(producer, bootstrap_servers)  # no broker: say so now, not after a minute of retries
    failures: list[str] = []
    on_delivery = delivery_reports(config, topic, failures, delivered=progress)
    sent = 0
    with refusals_raised(producer, config, topic):
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
