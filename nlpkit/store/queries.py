"""Reading back what the workers stored: filtered predictions, dead letters, counts.

Filters are plain dataclasses so the CLI, tests and plugin code build the same
queries; results stream from the database in chunks, so exporting millions of rows
does not hold them all in memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, update

from nlpkit.store.database import Database
from nlpkit.store.tables import DeadLetterRow, PredictionRow, TombstoneRow, utcnow

# The columns an export carries, in order: where the input came from, what it said, what the model said.
PREDICTION_COLUMNS = (
    "id",
    "task",
    "label",
    "score",
    "model_name",
    "model_revision",
    "backend",
    "source_topic",
    "source_partition",
    "source_offset",
    "source_key",
    "schema_id",
    "headers",
    "record_id",
    "input_text",
    "input_extra",
    "output",
    "message_timestamp",
    "stored_at",
)


@dataclass(frozen=True)
class PredictionFilter:
    """Which predictions to read; every field left as None matches everything."""

    task: str | None = None
    label: str | None = None
    model: str | None = None
    topic: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_score: float | None = None

    def apply(self, query: Select) -> Select:
        row = PredictionRow
        equal = {row.task: self.task, row.label: self.label, row.model_name: self.model, row.source_topic: self.topic}
        conditions = [column == value for column, value in equal.items() if value is not None]
        conditions += _time_range(row.stored_at, self.since, self.until)
        if self.min_score is not None:
            conditions.append(row.score >= self.min_score)
        return query.where(*conditions)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters to read; ``replayed`` None means replayed or not."""

    ids: Sequence[int] = ()
    task: str | None = None
    topic: str | None = None
    stage: str | None = None
    reason_contains: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    replayed: bool | None = None

    def apply(self, query: Select) -> Select:
        row = DeadLetterRow
        equal = {row.task: self.task, row.source_topic: self.topic, row.stage: self.stage}
        conditions = [column == value for column, value in equal.items() if value is not None]
        conditions += _time_range(row.stored_at, self.since, self.until)
        if self.ids:
            conditions.append(row.id.in_(list(self.ids)))
        if self.reason_contains:
            conditions.append(row.reason.contains(self.reason_contains, autoescape=True))
        if self.replayed is not None:
            conditions.append(row.replayed_at.is_not(None) if self.replayed else row.replayed_at.is_(None))
        return query.where(*conditions)


def _time_range(column: Any, since: dt.datetime | None, until: dt.datetime | None) -> list[Any]:
    """Conditions for ``since <= column < until``, either end open when None."""
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def count_predictions(database: Database, where: PredictionFilter) -> int:
    with database.session() as session:
        return int(session.scalar(where.apply(select(func.count()).select_from(PredictionRow))) or 0)


def iter_predictions(
    database: Database, where: PredictionFilter, limit: int | None = None, chunk: int = 1000
) -> Iterator[dict[str, Any]]:
    """Matching predictions as dicts of :data:`PREDICTION_COLUMNS` (``source_key`` the raw bytes) plus
    ``source_key_text``, oldest first, fetched ``chunk`` at a time."""
    columns = [getattr(PredictionRow, name) for name in (*PREDICTION_COLUMNS, "source_key_text")]
    query = where.apply(select(*columns)).order_by(PredictionRow.id).limit(limit)
    with database.engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=chunk).execute(query)
        for row in result:
            yield dict(row._mapping)


def dead_letters(database: Database, where: DeadLetterFilter, limit: int | None = None) -> list[DeadLetterRow]:
    """Matching dead letters, newest first (detached rows: safe to read after the session ends)."""
    query = where.apply(select(DeadLetterRow)).order_by(DeadLetterRow.id.desc()).limit(limit)
    with database.session() as session:
        return list(session.scalars(query))


def mark_replayed(database: Database, ids: Sequence[int]) -> int:
    """Stamp dead letters as replayed now; returns how many rows changed."""
    if not ids:
        return 0
    with database.session() as session:
        result = session.execute(
            update(DeadLetterRow).where(DeadLetterRow.id.in_(list(ids))).values(replayed_at=utcnow())
        )
        return result.rowcount


def counts_by_task(database: Database) -> dict[str, dict[str, int]]:
    """Per task: predictions, dead letters, and dead letters not yet replayed."""
    counts: dict[str, dict[str, int]] = {}

    def slot(task: str) -> dict[str, int]:
        return counts.setdefault(task, {"predictions": 0, "dead_letters": 0, "dead_letters_pending": 0})

    with database.session() as session:
        for task, number in session.execute(select(PredictionRow.task, func.count()).group_by(PredictionRow.task)):
            slot(task)["predictions"] = number
        # count(column) skips NULLs: it counts the replayed ones.
        query = select(DeadLetterRow.task, func.count(), func.count(DeadLetterRow.replayed_at))
        for task, number, replayed in session.execute(query.group_by(DeadLetterRow.task)):
            slot(task)["dead_letters"] = number
            slot(task)["dead_letters_pending"] = number - replayed
    return dict(sorted(counts.items()))


def tombstones_by_topic(database: Database) -> dict[str, int]:
    """How many tombstones (null values) the workers recorded and skipped, per topic."""
    query = select(TombstoneRow.source_topic, func.count()).group_by(TombstoneRow.source_topic)
    with database.session() as session:
        return {topic: count for topic, count in sorted(session.execute(query))}
