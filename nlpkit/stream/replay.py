"""Giving dead letters a second chance, once whatever rejected them has been fixed.

A dead letter keeps the message's raw key and value, so replaying it loses nothing:
either re-send it to its topic (the workers treat it as a new message, at a new offset)
or run it through the worker's own processing here and now, which stores its
prediction under the original (topic, partition, offset) — the row it would have had.
Either way the dead letter stays, stamped ``replayed_at``, as the record of what happened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nlpkit.store import Database, DeadLetterRow, as_utc
from nlpkit.store.queries import mark_replayed
from nlpkit.stream.decoding import MessageDecoder
from nlpkit.stream.kafka_clients import produce
from nlpkit.stream.processing import BatchProcessor, StandInMessage
from nlpkit.stream.sinks.database import DatabaseSink

if TYPE_CHECKING:
    from nlpkit.inference.engine import Engine
    from nlpkit.stream.sinks.output_topic import OutputTopic

REPLAY_HEADER = "nlpkit.replay-of"


def resend(
    database: Database, letters: Sequence[DeadLetterRow], bootstrap_servers: str, topic: str | None = None
) -> int:
    """Send each dead letter's raw key and value again, to ``topic`` or where it came from.

    Messages are marked replayed only once the broker has acknowledged every one of
    them, so a failed send leaves them all eligible for the next attempt.
    """
    by_topic: dict[str, list[DeadLetterRow]] = defaultdict(list)
    for letter in letters:
        by_topic[topic or letter.source_topic].append(letter)
    sent = 0
    for target, group in by_topic.items():
        messages = [(letter.source_key, letter.raw_value, {REPLAY_HEADER: _origin(letter)}) for letter in group]
        sent += produce(bootstrap_servers, target, messages)
        mark_replayed(database, [letter.id for letter in group])
    return sent


def _origin(letter: DeadLetterRow) -> bytes:
    return f"{letter.source_topic}/{letter.source_partition}/{letter.source_offset}".encode()


@dataclass(frozen=True)
class DirectReplay:
    stored: int
    still_dead: int


def process_directly(
    database: Database,
    letters: Sequence[DeadLetterRow],
    engines: Mapping[str, Engine],
    decoder: MessageDecoder | None = None,
    output: OutputTopic | None = None,
) -> DirectReplay:
    """Run dead letters through the worker's own processing now, as if Kafka had just delivered them.

    A message that now succeeds gets its prediction under its original (topic, partition,
    offset) and its dead letter is marked replayed; one that fails again keeps (or updates)
    its dead letter, with the new reason, unmarked. With ``output``, the new results are produced
    there after the database transaction, as a worker with an output topic does.
    """
    processor = BatchProcessor(engines, decoder=decoder)
    batch = processor.process([_as_message(letter) for letter in letters])
    DatabaseSink(database).write(batch, processor.models)
    if output is not None:
        output.publish(batch)
    fixed = {(row["source_topic"], row["source_partition"], row["source_offset"]) for row in batch.predictions}
    mark_replayed(database, [letter.id for letter in letters if _key(letter) in fixed])
    return DirectReplay(stored=len(batch.predictions), still_dead=len(batch.dead_letters))


def _key(letter: DeadLetterRow) -> tuple[str, int, int]:
    return letter.source_topic, letter.source_partition, letter.source_offset


def _as_message(letter: DeadLetterRow) -> StandInMessage:
    millis = int(as_utc(letter.message_timestamp or letter.stored_at).timestamp() * 1000)
    return StandInMessage(*_key(letter), letter.source_key, letter.raw_value, millis)
