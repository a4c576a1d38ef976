"""Writing a worker's batch when the database misbehaves: wait out outages, isolate poison rows.

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

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError, StatementError

from nlpkit.errors import error_line
from nlpkit.store import Database

Row = dict[str, Any]


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
