"""The dead-letter topic sink: each dead letter's raw key and value copied to a Kafka topic, the reason
and the source coordinates in headers, flushed before the batch's offsets move on."""

from __future__ import annotations

from confluent_kafka import Producer

from nlpkit.errors import NlpkitError
from nlpkit.stream.kafka_clients import client_config, new_client
from nlpkit.stream.processing import ProcessedBatch


class DeadLetterTopic:
    """Copies each batch's dead letters to ``topic`` with an idempotent producer of its own."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self._producer: Producer | None = None

    def new_producer(self) -> Producer:
        """The producer, with the configured pass-through properties (SASL, SSL, ...)."""
        return new_client(Producer, client_config(self.bootstrap_servers, **{"enable.idempotence": True}))

    def publish(self, batch: ProcessedBatch) -> None:
        if not batch.dead_letters:
            return
        if self._producer is None:
            self._producer = self.new_producer()
        for row in batch.dead_letters:
            self._producer.produce(
                self.topic,
                value=row["raw_value"],
                key=row["source_key"],
                headers={
                    "nlpkit.reason": row["reason"].encode(),
                    "nlpkit.source": f"{row['source_topic']}/{row['source_partition']}/{row['source_offset']}".encode(),
                },
            )
        # Before the offsets move on, the copies must be safely in Kafka too.
        if self._producer.flush(30):
            raise NlpkitError(f"dead letters could not be written to topic '{self.topic}'")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
