"""Giving dead letters a second chance, once whatever rejected them has been fixed.

A dead letter keeps the message's raw key and value, so replaying it loses nothing:
either re-send it to its topic (the workers treat it as a new message, at a new offset)
or run it through the worker's own processing here and now, which stores its
prediction under the original (topic, partition, offset) — the row it would have had.
Either way the dead letter stays, stamped ``replayed_at``, as the record of what happened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from nlpkit.kafkaio import produce
from nlpkit.queries import mark_replayed
from nlpkit.store import Database, DeadLetterRow

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
