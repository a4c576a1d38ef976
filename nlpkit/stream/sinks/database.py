"""The database sink: a batch in one transaction, outages waited out, poison rows isolated.

Two kinds of failure look alike from the outside and need opposite treatment:

- the database is *unavailable* (server down or restarting, connection dropped, SQLite
  locked by another writer): nothing is wrong with the rows, so the same write is
  retried with backoff for as long as it takes, and no offset moves meanwhile;
- the database *rejects a row* (PostgreSQL refuses NUL characters in text, a value
  breaks a constraint): retrying would fail forever, so the batch is bisected until
  the rejected rows are found, and those alone become dead letters. Rows are upserted
  on their source key, so writing the rest in several transactions instead of one
  changes nothing about exactly-once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError, StatementError

from nlpkit.errors import error_line
from nlpkit.store import Database, utcnow
from nlpkit.stream.messages import Rejected
from nlpkit.stream.processing import ProcessedBatch, Row, dead_letter_row

log = logging.getLogger("nlpkit.worker")
T = TypeVar("T")


def is_unavailable(exc: BaseException) -> bool:
    """True for failures of the connection or the server, not of the data: worth retrying as they are."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def is_rejection(exc: BaseException) -> bool:
    """True when the database (or its driver) refused the values themselves."""
    if is_unavailable(exc):
        return False
    if isinstance(exc, DataError | IntegrityError):
        return True
    # A value the driver cannot even send fails before any SQL runs: sqlite3 and psycopg raise
    # UnicodeEncodeError from executemany (SQLAlchemy passes it on unwrapped), others a StatementError.
    if isinstance(exc, UnicodeError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def rejection_reason(exc: BaseException) -> str:
    return f"database rejected the row: {error_line(exc)}"


def write_isolating(
    database: Database, predictions: Sequence[Row], dead_letters: Sequence[Row], tombstones: Sequence[Row] = ()
) -> list[tuple[Row, str]]:
    """Write all three lists; return the prediction rows the database rejected, each with its reason.

    The caller turns those into dead letters and writes them with :func:`write_dead_letters`.
    Outages propagate (see :func:`is_unavailable`) so the caller can wait and call again:
    every write here is an upsert, so repeating one is harmless.
    """
    try:
        database.write_batch(predictions, dead_letters, tombstones)
        return []
    except Exception as exc:
        if not is_rejection(exc):
            raise
    rejected = _bisect(lambda rows: database.write_batch(rows, []), list(predictions))
    write_dead_letters(database, dead_letters)
    database.write_batch([], [], tombstones)  # topic, partition, offset and key bytes: nothing to refuse
    return rejected


def write_dead_letters(database: Database, dead_letters: Sequence[Row]) -> None:
    """Dead letters are the last stop, so one the database refuses is retried with its reason
    and raw bytes kept and its text fields made safe, rather than lost."""
    refused = _bisect(lambda rows: database.write_batch([], rows), list(dead_letters))
    if refused:
        database.write_batch([], [_made_safe(row, reason) for row, reason in refused])


def _bisect(write: Callable[[list[Row]], None], rows: list[Row]) -> list[tuple[Row, str]]:
    if not rows:
        return []
    try:
        write(rows)
        return []
    except Exception as exc:
        if not is_rejection(exc):
            raise
        if len(rows) == 1:
            return [(rows[0], rejection_reason(exc))]
    middle = len(rows) // 2
    return _bisect(write, rows[:middle]) + _bisect(write, rows[middle:])


def _made_safe(row: Row, reason: str) -> Row:
    """A dead letter whose text columns hold only what any database accepts; the raw bytes are untouched."""

    def safe(text: str | None) -> str | None:
        return None if text is None else text.replace("\x00", "\\x00")

    return {**row, "task": safe(row["task"]), "reason": safe(f"{row['reason']} ({reason})")}


class StoppedDuringOutage(Exception):
    """Asked to stop while the database was unavailable: the batch stays unstored, for redelivery."""


class DatabaseSink:
    """Stores each processed batch in the database, then reports it to ``predictions_stored``.

    One transaction per batch; rows the database refuses become dead letters of their own
    (see :func:`write_isolating`); while the database is unavailable the write is retried,
    waiting ``retry_initial_s`` at first and doubling up to ``retry_max_s``. ``wait`` is
    how it waits (the worker polls Kafka meanwhile, to stay in its group) and ``stopping``
    says whether to give up instead: the batch was never stored, so it is delivered again.
    """

    def __init__(
        self,
        database: Database,
        *,
        hook: Any = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        wait: Callable[[float], None] = time.sleep,
        stopping: Callable[[], bool] = lambda: False,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.hook = hook
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.wait = wait
        self.stopping = stopping
        self.on_retry = on_retry

    def write(self, batch: ProcessedBatch, models: Mapping[str, str]) -> None:
        """Store ``batch`` (``models``: task name -> the model name reported to the hook)."""
        stored_at = utcnow()
        for row in (*batch.predictions, *batch.dead_letters, *batch.tombstones):
            row["stored_at"] = stored_at
        rejected = self._retrying(
            lambda: write_isolating(self.database, batch.predictions, batch.dead_letters, batch.tombstones)
        )
        if rejected:
            self._turn_into_dead_letters(batch, rejected, stored_at)
        if self.hook is not None:
            for stored in batch.by_task(models):
                try:
                    self.hook.predictions_stored(batch=stored)
                except Exception:  # a plugin's bug must not stop the stream; the rows are already safe
                    log.exception("a predictions_stored hook failed")

    def _turn_into_dead_letters(self, batch: ProcessedBatch, rejected: list[tuple[Row, str]], stored_at: Any) -> None:
        refused = {id(row) for row, _reason in rejected}
        batch.predictions = [row for row in batch.predictions if id(row) not in refused]
        letters = []
        for row, reason in rejected:
            message = batch.message_of(row)
            log.warning("%s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), reason)
            letters.append(
                dead_letter_row(message, row["task"], Rejected(reason, stage="store")) | {"stored_at": stored_at}
            )
        batch.dead_letters.extend(letters)
        self._retrying(lambda: write_dead_letters(self.database, letters))

    def _retrying(self, write: Callable[[], T]) -> T:
        """Run a database write until it succeeds, waiting out outages with exponential backoff.

        Rejected data is not an outage and propagates at once (``write`` isolates it). A stop
        requested during an outage abandons the batch: it was never stored, so its offsets
        are never committed and Kafka delivers it again.
        """
        delay = self.retry_initial_s
        while True:
            try:
                return write()
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                if self.stopping():
                    raise StoppedDuringOutage from exc
                log.warning("database unavailable (%s); retrying in %.1f s", error_line(exc), delay)
                if self.on_retry is not None:
                    self.on_retry()
                self.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
