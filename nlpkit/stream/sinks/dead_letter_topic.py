"""The dead-letter topic sink: each dead letter's raw key and value copied to a Kafka topic, flushed
before the batch's offsets move on.

The headers follow Kafka Connect's dead-letter queue (``errors.deadletterqueue.context.headers.enable``),
so tools written for Connect's dead letters read nlpkit's too:

| header | value |
|---|---|
| ``__connect.errors.topic``, ``__connect.errors.partition``, ``__connect.errors.offset`` | where the message was |
| ``__connect.errors.stage`` | where it failed: ``decode``, ``validate``, ``route``, ``model``, ``store`` |
| ``__connect.errors.exception.message`` | the reason, as stored with the dead letter |
| ``__connect.errors.connector.name`` | ``nlpkit-TASK``, the task it was meant for |
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from nlpkit.errors import NlpkitError
from nlpkit.stream.kafka_clients import client_config, delivery_reports, new_client, refusals_raised
from nlpkit.stream.processing import ProcessedBatch, Row

HEADER_PREFIX = "__connect.errors."


def dead_letter_message(row: Row) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(value, key, headers) of the message that carries a dead letter row to its topic."""
    context = {
        "topic": row["source_topic"],
        "partition": row["source_partition"],
        "offset": row["source_offset"],
        "stage": row["stage"],
        "exception.message": row["reason"],
        "connector.name": f"nlpkit-{row['task']}",
    }
    headers = [(HEADER_PREFIX + name, str(value).encode()) for name, value in context.items()]
    return row["raw_value"], row["source_key"], headers


class DeadLetterTopic:
    """Copies each batch's dead letters to ``topic`` with an idempotent producer of its own."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self._producer: Producer | None = None
        self._settings: dict[str, Any] = {}

    def new_producer(self) -> Producer:
        """The producer, with the configured pass-through properties (SASL, SSL, ...)."""
        self._settings = client_config(self.bootstrap_servers, **{"enable.idempotence": True})
        return new_client(Producer, self._settings)

    def publish(self, batch: ProcessedBatch) -> None:
        if not batch.dead_letters:
            return
        if self._producer is None:
            self._producer = self.new_producer()
        failures: list[str] = []
        on_delivery = delivery_reports(self._settings, self.topic, failures)
        with refusals_raised(self._producer, self._settings, self.topic):
            for row in batch.dead_letters:
                value, key, headers = dead_letter_message(row)
                self._producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            # Before the offsets move on, the copies must be safely in Kafka too.
            remaining = self._producer.flush(30)
        if remaining or failures:
            detail = failures[0] if failures else f"{remaining} unacknowledged after 30 s"
            raise NlpkitError(f"dead letters could not be written to topic '{self.topic}': {detail}")

    def close(self) -> None:
        if self._producer is not None:
            with refusals_raised(self._producer, self._settings, self.topic):
                self._producer.flush(30)
