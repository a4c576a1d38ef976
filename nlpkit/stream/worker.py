"""The Kafka worker: poll a batch, process it, hand it to the sinks, then commit.

Offsets are committed only after the database transaction that holds the batch's
predictions and dead letters has committed, and rows are upserted on (topic,
partition, offset, task). A worker killed at any point therefore loses nothing (the
uncommitted batch is delivered again) and duplicates nothing (the replay overwrites
the same rows). One bad message becomes a dead letter and never stops a partition.

What is committed is the consumer's position, not the last stored offset + 1: on a
topic written by transactional producers the position also moves past transaction
markers and the records of aborted transactions, which are never handed to the
application, so a drained partition shows a lag of 0 rather than one that never drains.

This module is the transport only: the consumer, its group membership, keep-alive
polls, signals and commits. Turning messages into rows is ``nlpkit.stream.processing``;
storing and copying them is ``nlpkit.stream.sinks``.

Polls overlap: while the model runs one poll's batches, the worker cuts the next poll into
batches (queued behind them, so the model's threads never wait between polls) and stores
the one before. Offsets stay behind every message not yet stored. When Kafka revokes
partitions (the callbacks run inside ``consume``), the poll in flight keeps running but
its rows from those partitions are dropped, neither stored nor committed: their new owner
reads them again. Messages a poll returned for partitions revoked during that same poll
are dropped unprocessed too. A worker told to stop finishes the poll it is storing and
leaves the one behind it to be read again.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from nlpkit.errors import NlpkitError
from nlpkit.inference import Engine
from nlpkit.store import Database, utcnow
from nlpkit.stream.decoding import MessageDecoder, configured_registry
from nlpkit.stream.kafka_clients import (
    check_topic_access,
    client_config,
    cluster_metadata,
    new_client,
    raise_refusal,
)
from nlpkit.stream.messages import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PASS_HEADERS
from nlpkit.stream.monitoring import STATS_INTERVAL_MS, WorkerMetrics
from nlpkit.stream.processing import BatchProcessor, PendingBatch, ProcessedBatch
from nlpkit.stream.sinks.database import DatabaseSink, StoppedDuringOutage
from nlpkit.stream.sinks.dead_letter_topic import DeadLetterTopic
from nlpkit.stream.sinks.output_topic import OutputTopic, ResultEncoder, TransactionAborted, TransactionalResults
from nlpkit.system.memory import trim_heap

log = logging.getLogger("nlpkit.worker")
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000  # librdkafka's default


@dataclass
class WorkerConfig:
    """How a worker consumes; ``consumer_config`` passes librdkafka settings straight through."""

    topics: Sequence[str]
    group: str
    bootstrap_servers: str
    # Messages per poll and per transaction. Larger polls let the engine sort more texts by
    # length: on 1,000 IMDb reviews, 256 reached 0.88 of the engine's own throughput where 64
    # reached 0.75; on SST-2 dev with int8, 256 gave 488 msg/s, 512 533 and 1,024 532 (the
    # engine alone on all 872 at once: 585). A poll of 512 long reviews takes about ten
    # seconds, far inside max.poll.interval.ms (and the keep-alive covers slower ones).
    batch_size: int = 512
    poll_timeout: float = 1.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_messages: int | None = None
    dead_letter_topic: str | None = None
    tombstones: str = "skip"
    # How keys and values are read (see nlpkit.stream.decoding): the value format, the key
    # format, task inputs mapped onto paths in nested records, and the Schema Registry URL
    # (else NLPKIT_SCHEMA_REGISTRY_URL, if set).
    value_format: str = "auto"
    key_format: str = "bytes"
    fields: dict[str, str] = field(default_factory=dict)
    schema_registry: str | None = None
    # Source headers kept with each stored row (and copied onto results).
    pass_headers: tuple[str, ...] = DEFAULT_PASS_HEADERS
    # Results to a topic too (see nlpkit.stream.sinks.output_topic): JSON, or Avro with a schema file.
    output_topic: str | None = None
    output_format: str = "json"
    output_schema: Path | None = None
    consumer_config: dict[str, Any] = field(default_factory=dict)
    # While the database is unavailable the batch is retried, waiting this long at first,
    # doubling up to the maximum; the consumer keeps polling (paused) so it stays in the group.
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


@dataclass
class WorkerStats:
    messages: int = 0
    predictions: int = 0
    dead_letters: int = 0
    tombstones: int = 0
    batches: int = 0
    # time.perf_counter() when the group first gave this worker partitions, and at the last successful
    # offset commit: when the work could start, and when it was done, before the consumer leaves its
    # group on the way out (the bench times a stream between the two).
    assigned_at: float | None = None
    committed_at: float | None = None


class Worker:
    """Consumes topics in a consumer group and stores one task's predictions per message.

    ``engines`` maps task names to ready engines; a message's ``task`` field picks one,
    and messages without it go to the first.
    """

    def __init__(
        self,
        config: WorkerConfig,
        engines: Mapping[str, Engine],
        database: Database | None,
        hook: Any = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``database`` None stores nothing: results go to ``config.output_topic`` and dead
        letters to ``config.dead_letter_topic``, in one Kafka transaction with the offsets."""
        if database is None and not (config.output_topic and config.dead_letter_topic):
            raise NlpkitError("without a database, name both --output-topic and --dead-letter-topic: nothing is lost")
        self.config = config
        self.metrics = metrics
        registry = configured_registry(config.schema_registry)
        decoder = MessageDecoder(
            max_bytes=config.max_message_bytes,
            value_format=config.value_format,
            key_format=config.key_format,
            fields=config.fields,
            registry=registry,
        )
        self.processor = BatchProcessor(
            engines,
            decoder=decoder,
            pass_headers=config.pass_headers,
            tombstones=config.tombstones,
            progress=self._keep_alive,
            on_inference=self._observe_inference,
        )
        self.database_sink = (
            None
            if database is None
            else DatabaseSink(
                database,
                hook=hook,
                retry_initial_s=config.retry_initial_s,
                retry_max_s=config.retry_max_s,
                wait=lambda seconds: self._keep_alive(wait=seconds),
                stopping=lambda: self._stopping,
                on_retry=metrics.database_retries.inc if metrics else None,
            )
        )
        encoder = ResultEncoder(config.output_format, registry=registry, schema_file=config.output_schema)
        # With a database: results and dead letters are copies, sent after the rows are stored.
        # Without one: they are the only record, and go out in one transaction with the offsets.
        self.output_topic = self.dead_letter_topic = self.transaction = None
        if database is None:
            self.transaction = TransactionalResults(
                config.output_topic,
                config.bootstrap_servers,
                encoder,
                group=config.group,
                dead_letter_topic=config.dead_letter_topic,
            )
        else:
            if config.output_topic:
                self.output_topic = OutputTopic(config.output_topic, config.bootstrap_servers, encoder)
            if config.dead_letter_topic:
                self.dead_letter_topic = DeadLetterTopic(config.dead_letter_topic, config.bootstrap_servers)
        self.stats = WorkerStats()
        self._stopping = False
        # Whether the broker has answered once; until then client errors are the startup
        # failure itself, which run() reports as one clear error.
        self.connected = False
        self._consumer: Consumer | None = None
        self._consumer_settings: dict[str, Any] = {}
        # Messages a keep-alive poll returned in the middle of a batch; they lead the next one.
        self._carried: list[Message] = []
        # Polls whose records are with the model, oldest first: the one being stored and the next.
        self._in_flight: list[_InFlight] = []
        self._last_poll = time.monotonic()
        poll_interval_ms = float(config.consumer_config.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS))
        self._keep_alive_every = poll_interval_ms / 1000 / 4
        if metrics is not None:
            # librdkafka's statistics (lag, broker state: what /healthz reports) arrive only with a
            # poll; during a long batch, poll often enough that they never go stale.
            self._keep_alive_every = min(self._keep_alive_every, STATS_INTERVAL_MS / 1000)
        self._assigned: set[tuple[str, int]] = set()
        # The offset last committed per partition, so an idle worker does not commit the same one every poll.
        self._committed: dict[tuple[str, int], int] = {}

    @property
    def assigned(self) -> bool:
        """Whether the group has given this worker partitions (it is ready to consume)."""
        return bool(self._assigned)

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, leave the group. Safe to call from a signal handler."""
        self._stopping = True

    def handle_signals(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second SIGINT interrupts at once (the batch is redelivered)."""

        def on_signal(signum: int, _frame: Any) -> None:
            if self._stopping and signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.info("received %s: finishing the current batch, then leaving the group", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def new_consumer(self) -> Consumer:
        """The worker's consumer: configured pass-through properties (SASL, SSL, ...), the
        worker's own settings, then ``consumer_config``. Made apart from :meth:`run` so what
        librdkafka accepts can be checked without a broker."""
        self._consumer_settings = client_config(
            self.config.bootstrap_servers,
            **{
                "group.id": self.config.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **(self.metrics.consumer_settings() if self.metrics else {}),
                **self.config.consumer_config,
            },
        )
        return new_client(Consumer, self._consumer_settings)

    def run(self) -> WorkerStats:
        consumer = self.new_consumer()
        self._consumer = consumer
        try:
            self._check_topics(consumer)
            self.connected = True
            consumer.subscribe(
                list(self.config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            self._loop(consumer)
        except StoppedDuringOutage:
            log.warning("stopped while the database was unavailable; the last batch will be delivered again")
        finally:
            for poll in self._in_flight:  # stopping: their messages are read again, by this group
                poll.pending.cancel()
            self._in_flight = []
            self._consumer = None
            consumer.close()  # leaves the group at once, so partitions move without waiting for a timeout
            for sink in (self.output_topic, self.dead_letter_topic, self.transaction):
                if sink is not None:
                    sink.close()
        return self.stats

    def _check_topics(self, consumer: Consumer) -> None:
        topics = cluster_metadata(consumer, self.config.bootstrap_servers).topics
        missing = [topic for topic in self.config.topics if topic not in topics]
        if missing:
            check_topic_access(consumer, self._consumer_settings, missing[0])
            raise NlpkitError(
                f"topic '{missing[0]}' does not exist; create it with `nlpkit topics create {missing[0]}`"
            )

    def _loop(self, consumer: Consumer) -> None:
        started, last_report = time.monotonic(), time.monotonic()
        while not self._stopping and not self._limit_reached():
            size = self._poll_size()
            # With a poll in flight, take only what has arrived: that poll's rows wait until this returns.
            timeout = 0 if self._in_flight else self.config.poll_timeout
            fresh = consumer.consume(num_messages=max(1, size - len(self._carried)), timeout=timeout)
            self._last_poll = time.monotonic()
            candidates = self._carried + fresh
            if self._in_flight and len(candidates) < size:
                # Caught up with the topic: store the poll in flight now. The next poll waits to fill, as one
                # with nothing in flight does, rather than start part-filled and commit ever more often.
                self._carried = candidates
                self._commit_positions(consumer, self._store_oldest())
            else:
                self._carried = candidates[size:]
                messages = [message for message in candidates[:size] if self._usable(message)]
                if messages:  # cut now, while the model runs the poll before; its batches queue behind that one's
                    self._in_flight.append(_InFlight(self.processor.start(messages)))
                if len(self._in_flight) > 1:  # the newest stays with the model while the worker polls again
                    self._commit_positions(consumer, self._store_oldest())
                elif not messages:  # nothing to store, but the position may have passed transaction markers
                    self._commit_positions(consumer)
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                self._report(last_report - started)
        while self._in_flight and not self._stopping:  # the message limit: the last poll is stored before leaving
            self._commit_positions(consumer, self._store_oldest())

    def _report(self, elapsed: float) -> None:
        log.info(
            "%d messages: %d predictions, %d dead letters, %d tombstones skipped (%.1f msg/s)",
            self.stats.messages,
            self.stats.predictions,
            self.stats.dead_letters,
            self.stats.tombstones,
            self.stats.messages / max(elapsed, 1e-9),
        )

    def _poll_size(self) -> int:
        if self.config.max_messages is None:
            return self.config.batch_size
        return max(1, min(self.config.batch_size, self.config.max_messages - self._taken()))

    def _taken(self) -> int:
        """Messages stored, and those in flight."""
        return self.stats.messages + len(self._in_flight_keys())

    def _in_flight_keys(self) -> list[tuple[str, int, int]]:
        """(topic, partition, offset) of every message with the model, not yet stored."""
        return [key for poll in self._in_flight for key in poll.pending.batch.messages]

    def _limit_reached(self) -> bool:
        return self.config.max_messages is not None and self._taken() >= self.config.max_messages

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is not None:
            raise_refusal(error, self._consumer_settings, message.topic())  # e.g. no ACL for the group
            if error.fatal():
                raise NlpkitError(f"fatal Kafka error: {error.str()}")
            log.warning("consumer error: %s", error.str())
            return False
        return (message.topic(), message.partition()) in self._assigned

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.stats.assigned_at is None and partitions:
            self.stats.assigned_at = time.perf_counter()
        self._assigned.update((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._assigned.discard((p.topic, p.partition))
            self._committed.pop((p.topic, p.partition), None)
            for poll in self._in_flight:
                poll.revoked.add((p.topic, p.partition))
        revoked = {(p.topic, p.partition) for p in partitions}
        # Whoever owns them next reads them from the committed offset, this worker too if they come back.
        self._carried = [m for m in self._carried if (m.topic(), m.partition()) not in revoked]
        log.info("revoked %s", _describe(partitions))

    # --- one batch -------------------------------------------------------------------

    def _store_oldest(self) -> ProcessedBatch:
        """The oldest poll in flight, once the model is through it, stored and handed to the sinks (less its
        rows from partitions revoked meanwhile)."""
        poll = self._in_flight[0]
        batch = poll.pending.finish()
        del self._in_flight[0]  # out of flight: its own rows no longer hold the next commit back
        if poll.revoked:
            batch = batch.without(poll.revoked)
        messages = list(batch.messages.values())
        if self.database_sink is not None:
            self.database_sink.write(batch, self.processor.models)
        for sink in (self.output_topic, self.dead_letter_topic):
            if sink is not None:
                sink.publish(batch)
        if self.metrics:
            self._observe(messages, batch)
        self.stats.messages += len(messages)
        self.stats.predictions += len(batch.predictions)
        self.stats.dead_letters += len(batch.dead_letters)
        self.stats.tombstones += len(batch.tombstones)
        self.stats.batches += 1
        trim_heap()  # without it, malloc fragmentation grows RSS batch after batch (nlpkit.system.memory)
        return batch

    def _observe_inference(self, task: str, seconds: float) -> None:
        if self.metrics:
            self.metrics.inference_seconds.labels(task).observe(seconds)

    def _observe(self, messages: list[Message], batch: ProcessedBatch) -> None:
        metrics = self.metrics
        metrics.batch_messages.observe(len(messages))
        for message in messages:
            metrics.consumed.labels(message.topic()).inc()
        for row in batch.predictions:
            metrics.stored.labels(row["task"]).inc()
        for row in batch.dead_letters:
            metrics.dead_letters.labels(row["task"], row["stage"]).inc()
        for row in batch.tombstones:
            metrics.tombstones.labels(row["source_topic"]).inc()
        for row in (*batch.predictions, *batch.dead_letters):
            if row["message_timestamp"] is not None:
                done = row.get("stored_at") or utcnow()  # no database: handed to the transaction now
                metrics.end_to_end_seconds.observe((done - row["message_timestamp"]).total_seconds())

    def _keep_alive(self, _progress: float = 0.0, wait: float = 0.0) -> None:
        """Poll with every partition paused, so a long batch or a database outage never exceeds
        ``max.poll.interval.ms`` and costs the worker its group membership (and the group a
        rebalance). Without ``wait`` it only polls when a quarter of that interval has passed.
        Anything a poll still returns is kept for the next batch, never dropped."""
        consumer = self._consumer
        if not wait and time.monotonic() - self._last_poll < self._keep_alive_every:
            return
        deadline = time.monotonic() + wait
        consumer.pause(consumer.assignment())
        try:
            while True:
                remaining = deadline - time.monotonic()
                polled = consumer.consume(num_messages=self.config.batch_size, timeout=max(0.0, min(remaining, 1.0)))
                self._carried += polled
                self._last_poll = time.monotonic()
                if remaining <= 0:
                    break
        finally:
            consumer.resume(consumer.assignment())

    def _commit_positions(self, consumer: Consumer, batch: ProcessedBatch | None = None) -> None:
        """Commit each assigned partition's position, once everything before it is stored.

        The position is where the consumer will read next: past every message it handed
        over (all processed and stored by now, but those still with the model or carried to
        the next batch, where the commit stops) and past what it never hands over
        (transaction markers, aborted records). Committing it rather than the last stored
        offset + 1 is what lets the lag of a transactional topic reach 0. Only positions
        that moved are committed.
        """
        if not self._assigned:
            return
        carried = [(m.topic(), m.partition(), m.offset()) for m in self._carried]
        held = _first_offsets([*carried, *self._in_flight_keys()])
        offsets = []
        for position in consumer.position([TopicPartition(t, p) for t, p in sorted(self._assigned)]):
            key = (position.topic, position.partition)
            if position.offset < 0:  # nothing read from this partition yet
                continue
            offset = min(position.offset, held.get(key, position.offset))
            if self._committed.get(key) != offset:
                offsets.append(TopicPartition(position.topic, position.partition, offset))
        if self.transaction is not None:
            if not self._commit_in_transaction(consumer, batch, offsets):
                return
        elif not offsets:
            return
        else:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                # Typically a rebalance got there first. The rows are stored and keyed by offset,
                # so whoever re-reads these messages overwrites the same rows.
                log.warning("offset commit failed (%s); the batch may be redelivered", exc.args[0].str())
                return
        self._committed.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)
        self.stats.committed_at = time.perf_counter()

    def _commit_in_transaction(
        self, consumer: Consumer, batch: ProcessedBatch | None, offsets: list[TopicPartition]
    ) -> bool:
        """Results, dead letters and offsets in one transaction; False when it was aborted, after
        moving the consumer back to the batch's first messages so they are read again."""
        if not offsets and not (batch and (batch.predictions or batch.dead_letters)):
            return False
        try:
            self.transaction.commit(batch, offsets, consumer.consumer_group_metadata())
        except TransactionAborted as exc:
            log.warning("transaction aborted (%s); the batch will be read again", exc)
            if batch is not None:
                self._rewind(consumer, batch)
            return False
        return True

    def _rewind(self, consumer: Consumer, batch: ProcessedBatch) -> None:
        """Back to the batch's first messages, and to those of the polls in flight behind it, which are
        dropped: everything from there on is read again."""
        for poll in self._in_flight:
            poll.pending.cancel()
        first = _first_offsets([*batch.messages, *self._in_flight_keys()])
        self._in_flight = []
        self._carried = [m for m in self._carried if (m.topic(), m.partition()) not in first]
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._assigned:
                consumer.seek(TopicPartition(topic, partition, offset))


@dataclass
class _InFlight:
    """A poll whose records went to the model: the worker stores it once the model is through."""

    pending: PendingBatch
    revoked: set[tuple[str, int]] = field(default_factory=set)  # its rows from these are dropped, not stored


def _first_offsets(messages: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The lowest offset per (topic, partition) among ``(topic, partition, offset)`` keys."""
    first: dict[tuple[str, int], int] = {}
    for topic, partition, offset in messages:
        first[(topic, partition)] = min(first.get((topic, partition), offset), offset)
    return first


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
