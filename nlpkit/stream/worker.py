"""The Kafka worker: poll a batch, decode, predict, store in one transaction, then commit.

Offsets are committed only after the database transaction that holds the batch's
predictions and dead letters has committed, and rows are upserted on (topic,
partition, offset, task). A worker killed at any point therefore loses nothing (the
uncommitted batch is delivered again) and duplicates nothing (the replay overwrites
the same rows). One bad message becomes a dead letter and never stops a partition.

What is committed is the consumer's position, not the last stored offset + 1: on a
topic written by transactional producers the position also moves past transaction
markers and the records of aborted transactions, which are never handed to the
application, so a drained partition shows a lag of 0 rather than one that never drains.
A null value is a tombstone: recorded and counted, not predicted (or, if asked, a dead letter).

Processing is synchronous between polls, so when Kafka revokes partitions (the
callbacks run inside ``consume``) the previous batch is already stored and committed:
nothing is in flight to lose. Messages a poll returned for partitions revoked during
that same poll are dropped unprocessed; their new owner will read them.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, Message, Producer, TopicPartition

from nlpkit.durable import is_unavailable, write_dead_letters, write_isolating
from nlpkit.errors import InvalidRecordError, NlpkitError, error_line
from nlpkit.hookspecs import StoredBatch
from nlpkit.inference.engine import Engine, RecordFailure
from nlpkit.kafkaio import client_config, cluster_metadata, new_client
from nlpkit.messages import DEFAULT_MAX_MESSAGE_BYTES, Decoded, Rejected, decode_message, key_text
from nlpkit.monitoring import WorkerMetrics
from nlpkit.store import Database, utcnow
from nlpkit.system.memory import trim_heap
from nlpkit.tasks.base import Prediction, Record

log = logging.getLogger("nlpkit.worker")
T = TypeVar("T")
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000  # librdkafka's default
# What becomes of a tombstone (a null value): recorded and skipped, or kept as a dead letter.
TOMBSTONE_POLICIES = ("skip", "dead-letter")


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


@dataclass
class _Batch:
    """One poll's worth of messages on their way to the database."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    tombstones: list[dict[str, Any]] = field(default_factory=list)
    dead_messages: list[tuple[Message, str]] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: dict[tuple[str, int, int], Message] = field(default_factory=dict)


class _Abandoned(Exception):
    """Asked to stop while the database was unavailable: the batch stays uncommitted, for redelivery."""


class Worker:
    """Consumes topics in a consumer group and stores one task's predictions per message.

    ``engines`` maps task names to ready engines; a message's ``task`` field picks one,
    and messages without it go to the first.
    """

    def __init__(
        self,
        config: WorkerConfig,
        engines: Mapping[str, Engine],
        database: Database,
        hook: Any = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        if not engines:
            raise NlpkitError("a worker needs at least one task")
        if config.tombstones not in TOMBSTONE_POLICIES:
            raise NlpkitError(f"tombstones must be one of {', '.join(TOMBSTONE_POLICIES)}, not '{config.tombstones}'")
        self.config = config
        self.engines = dict(engines)
        self.default_task = next(iter(self.engines))
        self.database = database
        self.hook = hook
        self.metrics = metrics
        self.stats = WorkerStats()
        self._stopping = False
        # Whether the broker has answered once; until then client errors are the startup
        # failure itself, which run() reports as one clear error.
        self.connected = False
        self._consumer: Consumer | None = None
        # Messages a keep-alive poll returned in the middle of a batch; they lead the next one.
        self._carried: list[Message] = []
        self._last_poll = time.monotonic()
        poll_interval_ms = float(config.consumer_config.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS))
        self._keep_alive_every = poll_interval_ms / 1000 / 4
        self._assigned: set[tuple[str, int]] = set()
        # The offset last committed per partition, so an idle worker does not commit the same one every poll.
        self._committed: dict[tuple[str, int], int] = {}
        self._dead_letter_producer: Producer | None = None

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
        return new_client(
            Consumer,
            client_config(
                self.config.bootstrap_servers,
                **{
                    "group.id": self.config.group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    **(self.metrics.consumer_settings() if self.metrics else {}),
                    **self.config.consumer_config,
                },
            ),
        )

    def new_dead_letter_producer(self) -> Producer:
        """The producer that copies dead letters to their topic, with the same pass-through properties."""
        return new_client(Producer, client_config(self.config.bootstrap_servers, **{"enable.idempotence": True}))

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
        except _Abandoned:
            log.warning("stopped while the database was unavailable; the last batch will be delivered again")
        finally:
            self._consumer = None
            consumer.close()  # leaves the group at once, so partitions move without waiting for a timeout
            if self._dead_letter_producer is not None:
                self._dead_letter_producer.flush(30)
        return self.stats

    def _check_topics(self, consumer: Consumer) -> None:
        topics = cluster_metadata(consumer, self.config.bootstrap_servers).topics
        missing = [topic for topic in self.config.topics if topic not in topics]
        if missing:
            raise NlpkitError(
                f"topic '{missing[0]}' does not exist; create it with `nlpkit topics create {missing[0]}`"
            )

    def _loop(self, consumer: Consumer) -> None:
        started, last_report = time.monotonic(), time.monotonic()
        while not self._stopping and not self._limit_reached():
            size = self._poll_size()
            fresh = consumer.consume(num_messages=max(1, size - len(self._carried)), timeout=self.config.poll_timeout)
            self._last_poll = time.monotonic()
            candidates = self._carried + fresh
            self._carried = candidates[size:]
            messages = [message for message in candidates[:size] if self._usable(message)]
            if messages:
                self._process(messages)
            self._commit_positions(consumer)
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                self._report(last_report - started)

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
        return max(1, min(self.config.batch_size, self.config.max_messages - self.stats.messages))

    def _limit_reached(self) -> bool:
        return self.config.max_messages is not None and self.stats.messages >= self.config.max_messages

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise NlpkitError(f"fatal Kafka error: {error.str()}")
            log.warning("consumer error: %s", error.str())
            return False
        return (message.topic(), message.partition()) in self._assigned

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._assigned.discard((p.topic, p.partition))
            self._committed.pop((p.topic, p.partition), None)
        log.info("revoked %s", _describe(partitions))

    # --- one batch -------------------------------------------------------------------

    def _process(self, messages: list[Message]) -> None:
        batch = self.process(messages)
        self._publish_dead_letters(batch)
        if self.metrics:
            self._observe(messages, batch)
        self.stats.messages += len(messages)
        self.stats.predictions += len(batch.predictions)
        self.stats.dead_letters += len(batch.dead_letters)
        self.stats.tombstones += len(batch.tombstones)
        self.stats.batches += 1
        trim_heap()  # without it, malloc fragmentation grows RSS batch after batch (nlpkit.system.memory)

    def process(self, messages: Sequence[Message]) -> _Batch:
        """Decode, validate, predict and store one poll's messages in one transaction.

        This is everything the worker does to messages short of Kafka itself (committing
        offsets, copying dead letters to a topic), so ``nlpkit.testing.run_through_worker``
        can put plugin tests through exactly this path with stand-in messages.
        """
        batch = _Batch()
        routed: dict[str, list[tuple[Message, Record]]] = defaultdict(list)
        for message in messages:
            key = (message.topic(), message.partition())
            batch.messages[key + (message.offset(),)] = message
            batch.next_offsets[key] = max(batch.next_offsets.get(key, 0), message.offset() + 1)
            if message.value() is None and self.config.tombstones == "skip":
                batch.tombstones.append(_tombstone_row(message))
                continue
            task, record_or_reason = self._route(message)
            if isinstance(record_or_reason, Rejected):
                self._dead(batch, message, task, record_or_reason)
            else:
                routed[task].append((message, record_or_reason))
        for task, items in routed.items():
            started = time.perf_counter()
            outcomes = self.engines[task].run([record for _message, record in items], progress=self._keep_alive)
            if self.metrics:
                self.metrics.inference_seconds.labels(task).observe(time.perf_counter() - started)
            for (message, record), outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, RecordFailure):
                    self._dead(batch, message, task, Rejected(outcome.reason, stage="model"))
                else:
                    batch.predictions.append(self._prediction_row(task, message, record, outcome))
        self._store(batch)
        return batch

    def _observe(self, messages: list[Message], batch: _Batch) -> None:
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
                metrics.end_to_end_seconds.observe((row["stored_at"] - row["message_timestamp"]).total_seconds())

    def _route(self, message: Message) -> tuple[str, Record | Rejected]:
        decoded = decode_message(message.value(), message.key(), self.config.max_message_bytes)
        if isinstance(decoded, Rejected):
            return self.default_task, decoded
        return self._validate(decoded)

    def _validate(self, decoded: Decoded) -> tuple[str, Record | Rejected]:
        task = decoded.task or self.default_task
        engine = self.engines.get(task)
        if engine is None:
            served = ", ".join(self.engines)
            return self.default_task, Rejected(f"task '{task}' is not served by this worker ({served})", "route")
        try:
            fields = engine.task.validate(decoded.fields)
        except InvalidRecordError as exc:
            return task, Rejected(str(exc), "validate")
        return task, Record(fields, decoded.record_id)

    def _prediction_row(self, task: str, message: Message, record: Record, prediction: Prediction) -> dict[str, Any]:
        loaded = self.engines[task].loaded
        primary, *others = self.engines[task].task.input_fields
        return {
            "task": task,
            "model_name": loaded.name,
            "model_revision": loaded.revision,
            "backend": loaded.backend.name,
            "source_topic": message.topic(),
            "source_partition": message.partition(),
            "source_offset": message.offset(),
            "source_key": message.key(),
            "source_key_text": key_text(message.key()),
            "record_id": record.id,
            "input_text": record.fields[primary],
            "input_extra": {name: record.fields[name] for name in others} or None,
            "label": prediction.label,
            "score": prediction.score,
            "output": prediction.output,
            "message_timestamp": _timestamp(message),
        }

    def _dead(self, batch: _Batch, message: Message, task: str, rejected: Rejected) -> None:
        batch.dead_messages.append((message, rejected.reason))
        batch.dead_letters.append(
            {
                "task": task,
                "source_topic": message.topic(),
                "source_partition": message.partition(),
                "source_offset": message.offset(),
                "source_key": message.key(),
                "raw_value": message.value(),
                "reason": rejected.reason,
                "stage": rejected.stage,
                "message_timestamp": _timestamp(message),
                "replayed_at": None,
            }
        )

    def _store(self, batch: _Batch) -> None:
        stored_at = utcnow()
        for row in (*batch.predictions, *batch.dead_letters, *batch.tombstones):
            row["stored_at"] = stored_at
        rejected = self._retrying(
            lambda: write_isolating(self.database, batch.predictions, batch.dead_letters, batch.tombstones)
        )
        if rejected:
            self._turn_rejected_into_dead_letters(batch, rejected, stored_at)
        if self.hook is not None:
            stored = StoredBatch(
                task=self.default_task,
                model=self.engines[self.default_task].loaded.name,
                predictions=batch.predictions,
                dead_letters=batch.dead_letters,
                topic_offsets=dict(batch.next_offsets),
            )
            try:
                self.hook.predictions_stored(batch=stored)
            except Exception:  # a plugin's bug must not stop the stream; the rows are already safe
                log.exception("a predictions_stored hook failed")

    def _turn_rejected_into_dead_letters(
        self, batch: _Batch, rejected: list[tuple[dict[str, Any], str]], stored_at: dt.datetime
    ) -> None:
        refused = {id(row) for row, _reason in rejected}
        batch.predictions = [row for row in batch.predictions if id(row) not in refused]
        first_new = len(batch.dead_letters)
        for row, reason in rejected:
            message = batch.messages[(row["source_topic"], row["source_partition"], row["source_offset"])]
            log.warning("%s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), reason)
            self._dead(batch, message, row["task"], Rejected(reason, stage="store"))
        new_letters = batch.dead_letters[first_new:]
        for row in new_letters:
            row["stored_at"] = stored_at
        self._retrying(lambda: write_dead_letters(self.database, new_letters))

    def _retrying(self, write: Callable[[], T]) -> T:
        """Run a database write until it succeeds, waiting out outages with exponential backoff.

        Rejected data is not an outage and propagates at once (``write`` isolates it). A stop
        requested during an outage abandons the batch: it was never stored, so its offsets
        are never committed and Kafka delivers it again.
        """
        delay = self.config.retry_initial_s
        while True:
            try:
                return write()
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                if self._stopping:
                    raise _Abandoned from exc
                log.warning("database unavailable (%s); retrying in %.1f s", error_line(exc), delay)
                if self.metrics:
                    self.metrics.database_retries.inc()
                self._keep_alive(wait=delay)
                delay = min(delay * 2, self.config.retry_max_s)

    def _keep_alive(self, _progress: float = 0.0, wait: float = 0.0) -> None:
        """Poll with every partition paused, so a long batch or a database outage never exceeds
        ``max.poll.interval.ms`` and costs the worker its group membership (and the group a
        rebalance). Without ``wait`` it only polls when a quarter of that interval has passed.
        Anything a poll still returns is kept for the next batch, never dropped."""
        consumer = self._consumer
        if consumer is None:  # processing without Kafka (nlpkit.harness)
            time.sleep(wait)
            return
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

    def _publish_dead_letters(self, batch: _Batch) -> None:
        """Copy dead letters to the dead-letter topic (raw value and key, reason in headers)."""
        topic = self.config.dead_letter_topic
        if not topic or not batch.dead_messages:
            return
        if self._dead_letter_producer is None:
            self._dead_letter_producer = self.new_dead_letter_producer()
        for message, reason in batch.dead_messages:
            self._dead_letter_producer.produce(
                topic,
                value=message.value(),
                key=message.key(),
                headers={
                    "nlpkit.reason": reason.encode(),
                    "nlpkit.source": f"{message.topic()}/{message.partition()}/{message.offset()}".encode(),
                },
            )
        # Before the offsets move on, the copies must be safely in Kafka too.
        if self._dead_letter_producer.flush(30):
            raise NlpkitError(f"dead letters could not be written to topic '{topic}'")

    def _commit_positions(self, consumer: Consumer) -> None:
        """Commit each assigned partition's position, once everything before it is stored.

        The position is where the consumer will read next: past every message it handed
        over (all processed and stored by now, but those carried to the next batch, where
        the commit stops) and past what it never hands over (transaction markers, aborted
        records). Committing it rather than the last stored offset + 1 is what lets the
        lag of a transactional topic reach 0. Only positions that moved are committed.
        """
        if not self._assigned:
            return
        held: dict[tuple[str, int], int] = {}
        for message in self._carried:
            key = (message.topic(), message.partition())
            held[key] = min(held.get(key, message.offset()), message.offset())
        offsets = []
        for position in consumer.position([TopicPartition(t, p) for t, p in sorted(self._assigned)]):
            key = (position.topic, position.partition)
            if position.offset < 0:  # nothing read from this partition yet
                continue
            offset = min(position.offset, held.get(key, position.offset))
            if self._committed.get(key) != offset:
                offsets.append(TopicPartition(position.topic, position.partition, offset))
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance got there first. The rows are stored and keyed by offset,
            # so whoever re-reads these messages overwrites the same rows.
            log.warning("offset commit failed (%s); the batch may be redelivered", exc.args[0].str())
            return
        self._committed.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)



def _tombstone_row(message: Message) -> dict[str, Any]:
    return {
        "source_topic": message.topic(),
        "source_partition": message.partition(),
        "source_offset": message.offset(),
        "source_key": message.key(),
        "message_timestamp": _timestamp(message),
    }


def _timestamp(message: Message) -> dt.datetime | None:
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
