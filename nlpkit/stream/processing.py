"""From a batch of messages to rows: decode, validate, route to a task, predict, shape the rows.

This is everything between receiving messages and handing rows to the sinks, and none of
it knows where the messages came from: the Kafka worker feeds it what it polled,
``nlpkit dead-letters replay --direct`` feeds it dead letters' raw bytes, and
``nlpkit.testing.run_through_worker`` feeds it a test's messages. Anything with the few
methods of :class:`Incoming` (a ``confluent_kafka.Message`` has them) will do.

Nothing here raises on bad input: a message that cannot become a prediction becomes a
dead letter row with its raw bytes and the reason, and a null value (a tombstone) is
recorded, not predicted, unless the worker was told to dead-letter tombstones too.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE

from nlpkit.errors import InvalidRecordError, NlpkitError
from nlpkit.hookspecs import StoredBatch
from nlpkit.inference import Engine, EngineRun, RecordFailure
from nlpkit.stream.decoding import MessageDecoder
from nlpkit.stream.messages import DEFAULT_PASS_HEADERS, Decoded, Rejected, key_text
from nlpkit.tasks import Prediction, Record

Row = dict[str, Any]
# What becomes of a tombstone (a null value): recorded and skipped, or kept as a dead letter.
TOMBSTONE_POLICIES = ("skip", "dead-letter")


class Incoming(Protocol):
    """The parts of a Kafka message processing reads (``confluent_kafka.Message`` has them all)."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


@dataclass(frozen=True)
class StandInMessage:
    """A message no broker delivered just now: a test's message, or a dead letter replayed in place."""

    topic_name: str
    partition_number: int
    offset_number: int
    key_bytes: bytes | None
    value_bytes: bytes | None
    timestamp_ms: int
    header_list: list[tuple[str, bytes]] | None = None

    def topic(self) -> str:
        return self.topic_name

    def partition(self) -> int:
        return self.partition_number

    def offset(self) -> int:
        return self.offset_number

    def key(self) -> bytes | None:
        return self.key_bytes

    def value(self) -> bytes | None:
        return self.value_bytes

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self.timestamp_ms

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.header_list


@dataclass
class ProcessedBatch:
    """One batch's rows on their way to the sinks, and the messages they came from."""

    predictions: list[Row] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    tombstones: list[Row] = field(default_factory=list)
    # For each (topic, partition): the offset after the batch's last message there.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: dict[tuple[str, int, int], Incoming] = field(default_factory=dict)

    def without(self, partitions: set[tuple[str, int]]) -> ProcessedBatch:
        """The batch less everything from ``partitions`` (those taken from this worker while it ran)."""

        def kept(rows: list[Row]) -> list[Row]:
            return [row for row in rows if (row["source_topic"], row["source_partition"]) not in partitions]

        return ProcessedBatch(
            predictions=kept(self.predictions),
            dead_letters=kept(self.dead_letters),
            tombstones=kept(self.tombstones),
            next_offsets={key: offset for key, offset in self.next_offsets.items() if key not in partitions},
            messages={key: message for key, message in self.messages.items() if key[:2] not in partitions},
        )

    def message_of(self, row: Row) -> Incoming:
        return self.messages[(row["source_topic"], row["source_partition"], row["source_offset"])]

    def by_task(self, models: Mapping[str, str]) -> list[StoredBatch]:
        """The batch as ``predictions_stored`` receives it: one StoredBatch per task with rows,
        each naming the model that ran that task (``models``: task name -> model name)."""
        tasks = dict.fromkeys(row["task"] for row in (*self.predictions, *self.dead_letters))
        return [
            StoredBatch(
                task=task,
                model=models.get(task, ""),
                predictions=[row for row in self.predictions if row["task"] == task],
                dead_letters=[row for row in self.dead_letters if row["task"] == task],
                topic_offsets=dict(self.next_offsets),
            )
            for task in tasks
        ]


class BatchProcessor:
    """Turns batches of messages into prediction, dead-letter and tombstone rows.

    ``engines`` maps task names to ready engines; a message's ``task`` field picks one,
    and messages without it go to the first. ``decoder`` turns key and value into fields
    (JSON or text by default; Schema Registry formats and field maps when configured).
    The source headers named in ``pass_headers`` are kept with each prediction.
    ``progress`` is called while a long batch runs through a model (the worker uses it to
    stay in its consumer group).
    """

    def __init__(
        self,
        engines: Mapping[str, Engine],
        *,
        decoder: MessageDecoder | None = None,
        pass_headers: Sequence[str] = DEFAULT_PASS_HEADERS,
        tombstones: str = "skip",
        progress: Callable[[float], None] | None = None,
        on_inference: Callable[[str, float], None] | None = None,
    ) -> None:
        if not engines:
            raise NlpkitError("a worker needs at least one task")
        if tombstones not in TOMBSTONE_POLICIES:
            raise NlpkitError(f"tombstones must be one of {', '.join(TOMBSTONE_POLICIES)}, not '{tombstones}'")
        self.engines = dict(engines)
        self.default_task = next(iter(self.engines))
        self.decoder = decoder or MessageDecoder()
        self.pass_headers = tuple(pass_headers)
        self.tombstones = tombstones
        self.progress = progress
        self.on_inference = on_inference

    @property
    def models(self) -> dict[str, str]:
        """Task name -> the name of the model that serves it."""
        return {task: engine.loaded.name for task, engine in self.engines.items()}

    def process(self, messages: Sequence[Incoming]) -> ProcessedBatch:
        return self.start(messages).finish()

    def start(self, messages: Sequence[Incoming]) -> PendingBatch:
        """Decode, validate and route the messages, and queue their records for the models (see
        :meth:`Engine.start`); :meth:`PendingBatch.finish` waits for the outcomes and makes the rows."""
        pending = PendingBatch(self)
        batch = pending.batch
        routed: dict[str, list[tuple[Incoming, Record, int | None]]] = defaultdict(list)
        for message in messages:
            key = (message.topic(), message.partition())
            batch.messages[key + (message.offset(),)] = message
            batch.next_offsets[key] = max(batch.next_offsets.get(key, 0), message.offset() + 1)
            if message.value() is None and self.tombstones == "skip":
                batch.tombstones.append(tombstone_row(message))
                continue
            decoded = self.decoder.decode(message.topic(), message.value(), message.key())
            task, record_or_reason = (
                (self.default_task, decoded) if isinstance(decoded, Rejected) else self._validate(decoded)
            )
            if isinstance(record_or_reason, Rejected):
                batch.dead_letters.append(dead_letter_row(message, task, record_or_reason))
            else:
                routed[task].append((message, record_or_reason, decoded.schema_id))
        for task, items in routed.items():
            started = time.perf_counter()
            run = self.engines[task].start([record for _message, record, _schema in items])
            pending.running.append((task, items, run, started))
        return pending

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

    def prediction_row(
        self, task: str, message: Incoming, record: Record, prediction: Prediction, schema_id: int | None
    ) -> Row:
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
            "schema_id": schema_id,
            "headers": passed_headers(message, self.pass_headers),
            "record_id": record.id,
            "input_text": record.fields[primary],
            "input_extra": {name: record.fields[name] for name in others} or None,
            "label": prediction.label,
            "score": prediction.score,
            "output": prediction.output,
            "message_timestamp": message_timestamp(message),
        }


class PendingBatch:
    """A batch whose records are with the models: :meth:`finish` makes its rows once they are through."""

    def __init__(self, processor: BatchProcessor) -> None:
        self.processor = processor
        self.batch = ProcessedBatch()  # tombstones and dead letters from decoding are in it already
        # Per task: its messages with their records, the engine run, and when it started.
        self.running: list[tuple[str, list[tuple[Incoming, Record, int | None]], EngineRun, float]] = []

    def finish(self) -> ProcessedBatch:
        """Wait for every task's outcomes and add a prediction or a dead letter per record."""
        processor, batch = self.processor, self.batch
        for task, items, run, started in self.running:
            outcomes = run.outcomes(progress=processor.progress)
            if processor.on_inference is not None:
                processor.on_inference(task, time.perf_counter() - started)
            for (message, record, schema_id), outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, RecordFailure):
                    batch.dead_letters.append(dead_letter_row(message, task, Rejected(outcome.reason, stage="model")))
                else:
                    batch.predictions.append(processor.prediction_row(task, message, record, outcome, schema_id))
        self.running = []
        return batch

    def cancel(self) -> None:
        """Drop what the models have not started: its messages are left to be read again."""
        for _task, _items, run, _started in self.running:
            run.cancel()


def passed_headers(message: Incoming, names: Sequence[str]) -> dict[str, str] | None:
    """The named headers of a message (the last value of each, as text), or None when it has none of them."""
    if not names:
        return None
    found = {
        name: "" if value is None else value.decode("utf-8", "replace")  # Kafka allows a header without a value
        for name, value in message.headers() or ()
        if name in names
    }
    return found or None


def dead_letter_row(message: Incoming, task: str, rejected: Rejected) -> Row:
    """A dead letter: the message's raw key and value, where it came from, and why it failed."""
    return {
        "task": task,
        "source_topic": message.topic(),
        "source_partition": message.partition(),
        "source_offset": message.offset(),
        "source_key": message.key(),
        "raw_value": message.value(),
        "reason": rejected.reason,
        "stage": rejected.stage,
        "message_timestamp": message_timestamp(message),
        "replayed_at": None,
    }


def tombstone_row(message: Incoming) -> Row:
    return {
        "source_topic": message.topic(),
        "source_partition": message.partition(),
        "source_offset": message.offset(),
        "source_key": message.key(),
        "message_timestamp": message_timestamp(message),
    }


def message_timestamp(message: Incoming) -> dt.datetime | None:
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
