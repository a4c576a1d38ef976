"""The output topic sink: one result message per stored prediction, for services that read topics.

A result's key is the source message's key (bytes, as it came), its value the JSON object
stored on the row's ``output`` column (or an Avro record of it, with ``--output-format
avro``), and its headers say where it came from and what made it:

| header | value |
|---|---|
| ``nlpkit.task`` | the task |
| ``nlpkit.model``, ``nlpkit.model.revision`` | the model's name and revision |
| ``nlpkit.backend`` | how the model ran |
| ``nlpkit.source.topic``, ``nlpkit.source.partition``, ``nlpkit.source.offset`` | the source message |
| the passed headers (``--pass-headers``) | as the source had them, e.g. ``traceparent`` |

With a database the producer is idempotent and results go out after the database
transaction: a worker killed in between sends them again, so a result may repeat (never
go missing), and its source coordinates let a consumer drop the repeat. With no database
(:class:`TransactionalResults`) results and the consumed offsets commit in one Kafka
transaction: a ``read_committed`` consumer of the output sees each result exactly once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer, TopicPartition

from nlpkit.errors import NlpkitError
from nlpkit.stream.kafka_clients import (
    KafkaRefusal,
    client_config,
    delivery_reports,
    new_client,
    raise_refusal,
    refusals_raised,
)
from nlpkit.stream.processing import ProcessedBatch, Row

log = logging.getLogger("nlpkit.worker")
OUTPUT_FORMATS = ("json", "avro")
FLUSH_TIMEOUT_S = 30


class ResultEncoder:
    """A prediction row as the result message's value and headers."""

    def __init__(self, output_format: str = "json", *, registry: Any = None, schema_file: Path | None = None) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise NlpkitError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not '{output_format}'")
        self._serializer = None
        if output_format == "avro":
            if registry is None or schema_file is None:
                raise NlpkitError("--output-format avro needs --schema-registry URL and --output-schema FILE (.avsc)")
            from confluent_kafka.schema_registry.avro import AvroSerializer

            self._serializer = AvroSerializer(registry, schema_file.read_text(encoding="utf-8"))

    def value(self, topic: str, row: Row) -> bytes:
        if self._serializer is None:
            return json.dumps(row["output"], ensure_ascii=False).encode()
        from confluent_kafka.serialization import MessageField, SerializationContext

        return self._serializer(row["output"], SerializationContext(topic, MessageField.VALUE))

    @staticmethod
    def headers(row: Row) -> list[tuple[str, bytes]]:
        made_by = [
            ("nlpkit.task", row["task"]),
            ("nlpkit.model", row["model_name"]),
            ("nlpkit.model.revision", row["model_revision"]),
            ("nlpkit.backend", row["backend"]),
            ("nlpkit.source.topic", row["source_topic"]),
            ("nlpkit.source.partition", str(row["source_partition"])),
            ("nlpkit.source.offset", str(row["source_offset"])),
        ]
        passed = list((row.get("headers") or {}).items())
        return [(name, str(value).encode()) for name, value in made_by + passed]


class OutputTopic:
    """Produces each batch's results with an idempotent producer and waits for every acknowledgement."""

    def __init__(self, topic: str, bootstrap_servers: str, encoder: ResultEncoder) -> None:
        self.topic = topic
        self.encoder = encoder
        self._settings = client_config(bootstrap_servers, **{"enable.idempotence": True})
        self._producer = new_client(Producer, self._settings)

    def publish(self, batch: ProcessedBatch) -> None:
        failures: list[str] = []
        on_delivery = delivery_reports(self._settings, self.topic, failures)
        with refusals_raised(self._producer, self._settings, self.topic):
            for row in batch.predictions:
                _produce(self._producer, self.topic, row, self.encoder, on_delivery)
            remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or failures:
            detail = failures[0] if failures else f"{remaining} unacknowledged after {FLUSH_TIMEOUT_S} s"
            raise NlpkitError(f"results could not be written to topic '{self.topic}': {detail}")

    def close(self) -> None:
        with refusals_raised(self._producer, self._settings, self.topic):  # refused before any result was sent
            self._producer.flush(FLUSH_TIMEOUT_S)


class TransactionalResults:
    """Results (and dead letters) and the consumed offsets in one Kafka transaction per batch.

    The transactional id is new for each worker process; fencing a zombie worker is the
    consumer group's job (the group metadata sent with the offsets, KIP-447), as in Kafka
    Streams' exactly-once v2.
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        encoder: ResultEncoder,
        *,
        group: str,
        dead_letter_topic: str,
    ) -> None:
        self.topic = topic
        self.encoder = encoder
        self.dead_letter_topic = dead_letter_topic
        settings = {"transactional.id": f"nlpkit-{group}-{uuid.uuid4().hex[:12]}", "enable.idempotence": True}
        self._settings = client_config(bootstrap_servers, **settings)
        self._producer = new_client(Producer, self._settings)
        with refusals_raised(self._producer, self._settings, topic):
            self._producer.init_transactions(FLUSH_TIMEOUT_S)

    def commit(self, batch: ProcessedBatch | None, offsets: Sequence[TopicPartition], group_metadata: Any) -> None:
        """One transaction: the batch's results and dead letters, and the consumer's positions."""
        from nlpkit.stream.sinks.dead_letter_topic import dead_letter_message

        producer = self._producer
        failures: list[str] = []
        on_delivery = delivery_reports(self._settings, self.topic, failures)
        producer.begin_transaction()
        try:
            for row in batch.predictions if batch else ():
                _produce(producer, self.topic, row, self.encoder, on_delivery)
            for row in batch.dead_letters if batch else ():
                value, key, headers = dead_letter_message(row)
                producer.produce(self.dead_letter_topic, value=value, key=key, headers=headers)
            if offsets:
                producer.send_offsets_to_transaction(list(offsets), group_metadata, FLUSH_TIMEOUT_S)
            producer.flush(FLUSH_TIMEOUT_S)
            if failures:
                raise NlpkitError(f"results could not be written to topic '{self.topic}': {failures[0]}")
            producer.commit_transaction(FLUSH_TIMEOUT_S)
        except KafkaRefusal:
            raise  # retrying the batch would be refused again
        except (KafkaException, NlpkitError) as exc:
            if isinstance(exc, KafkaException):
                raise_refusal(exc.args[0], self._settings)  # a missing ACL for the group or the transactional id
            abortable = isinstance(exc, NlpkitError) or exc.args[0].txn_requires_abort()
            if not abortable:
                raise NlpkitError(f"Kafka transaction failed: {exc}") from exc
            producer.abort_transaction(FLUSH_TIMEOUT_S)
            raise TransactionAborted(str(exc)) from exc

    def close(self) -> None:
        with refusals_raised(self._producer, self._settings, self.topic):  # refused before any result was sent
            self._producer.flush(FLUSH_TIMEOUT_S)


class TransactionAborted(Exception):
    """The batch's transaction was aborted: nothing of it is visible, and it must be read again."""


def _produce(producer: Producer, topic: str, row: Row, encoder: ResultEncoder, on_delivery: Callable) -> None:
    value, headers = encoder.value(topic, row), encoder.headers(row)
    while True:
        try:
            producer.produce(topic, value=value, key=row["source_key"], headers=headers, on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:  # the local queue is full: let deliveries drain, then retry
            producer.poll(0.5)
