"""Messages through the real worker, without a broker: what a plugin's task would store.

A plugin author wants to know what ``nlpkit consume --task NAME`` does with their task:
which messages become predictions, what the stored rows look like, which become dead
letters and why. :func:`run_through_worker` answers that in a unit test. It wraps each
message in a stand-in for a Kafka message and hands them to the worker's own
processing (``nlpkit.stream.processing``: decode, validate, route, engine) and database
sink (one transaction per batch, then the ``predictions_stored`` hook), then reads back
what landed in the database.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from nlpkit.inference import Engine
from nlpkit.pipelines import ModelRegistry, load_task
from nlpkit.plugins import load_plugins
from nlpkit.store import Base, Database, DeadLetterRow, PredictionRow, TombstoneRow, migrated_database
from nlpkit.stream.decoding import MessageDecoder
from nlpkit.stream.messages import DEFAULT_MAX_MESSAGE_BYTES
from nlpkit.stream.processing import BatchProcessor, StandInMessage
from nlpkit.stream.sinks.database import DatabaseSink

# A message value as a test writes it: a dict is sent as JSON, a str as UTF-8, bytes as they are
# and None as a null value (a tombstone). A (key, value) pair also gives the message a key.
Value = Mapping[str, Any] | str | bytes | None
Key = str | bytes | None
SentMessage = Value | tuple[Key, Value]


@dataclass(frozen=True)
class WorkerRun:
    """The rows a worker stored for one topic, read back from the database, in offset order.

    Each row is a dict of the table's columns (``predictions``, ``dead_letters`` and
    ``tombstones``), so a test sees exactly what an operator querying the database would.
    """

    predictions: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    tombstones: list[dict[str, Any]]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Each prediction's ``output`` JSON, what ``nlpkit predict`` would print."""
        return [row["output"] for row in self.predictions]


def run_through_worker(
    task: str,
    model: str | Path,
    messages: Sequence[SentMessage],
    *,
    database_url: str | None = None,
    topic: str = "nlpkit-test",
    batch_size: int = 512,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tombstones: str = "skip",
    hook: Any = None,
    **options: Any,
) -> WorkerRun:
    """Process ``messages`` as a worker consuming ``topic`` for ``task`` would, and return the stored rows.

    ``model`` is anything ``--model`` takes: a directory, or a name registered in the
    database. Messages get offsets 0, 1, 2, ... on partition 0 of ``topic`` and are stored
    ``batch_size`` at a time, one transaction per batch, as polls would be. The database
    defaults to a temporary SQLite file, deleted afterwards; pass ``database_url`` to keep
    the rows (it is migrated first). ``hook`` is what receives ``predictions_stored``; by
    default the loaded plugins, as with ``nlpkit consume``. Other keyword arguments are
    ``load_task``'s: ``device``, ``backend`` and the task's own options.
    """
    stand_ins = [_stand_in(topic, offset, message) for offset, message in enumerate(messages)]
    with _database(database_url) as database:
        loaded = load_task(task, str(model), registry=ModelRegistry(database), **options)
        decoder = MessageDecoder(max_bytes=max_message_bytes)
        processor = BatchProcessor({task: Engine(loaded)}, decoder=decoder, tombstones=tombstones)
        sink = DatabaseSink(database, hook=load_plugins().hook if hook is None else hook)
        for start in range(0, len(stand_ins), batch_size):
            sink.write(processor.process(stand_ins[start : start + batch_size]), processor.models)
        return WorkerRun(*(_rows(database, table, topic) for table in (PredictionRow, DeadLetterRow, TombstoneRow)))


@contextmanager
def _database(url: str | None) -> Iterator[Database]:
    with tempfile.TemporaryDirectory(prefix="nlpkit-worker-run-") as scratch:
        database = migrated_database(url or f"sqlite:///{Path(scratch) / 'nlpkit.db'}")
        try:
            yield database
        finally:
            database.dispose()


def _stand_in(topic: str, offset: int, message: SentMessage) -> StandInMessage:
    key, value = message if isinstance(message, tuple) else (None, message)
    return StandInMessage(topic, 0, offset, _encode(key), _encode(value), int(time.time() * 1000))


def _encode(value: Value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, ensure_ascii=False).encode()


def _rows(database: Database, row_class: type[Base], topic: str) -> list[dict[str, Any]]:
    columns = [column.name for column in row_class.__table__.columns]
    query = (
        select(row_class)
        .where(row_class.source_topic == topic)
        .order_by(row_class.source_partition, row_class.source_offset)
    )
    with database.session() as session:
        return [{name: getattr(row, name) for name in columns} for row in session.scalars(query)]
