"""The tables nlpkit stores, as SQLAlchemy classes; the Alembic migrations create and change them.

Rows that come from Kafka are keyed by (topic, partition, offset[, task]) so that a batch
written twice overwrites itself (see ``nlpkit.store.writes.upsert``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


# Where a row came from: the key that makes replayed writes overwrite instead of duplicate.
SOURCE_KEY = ("source_topic", "source_partition", "source_offset", "task")
# A tombstone belongs to no task: one row per message.
TOMBSTONE_KEY = ("source_topic", "source_partition", "source_offset")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class PredictionRow(Base):
    """One task's prediction for one input, with where the input came from."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint(*SOURCE_KEY, name="uq_predictions_source"),
        Index("ix_predictions_task_label", "task", "label"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(255), index=True)
    model_revision: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    source_topic: Mapped[str | None] = mapped_column(String(255))
    source_partition: Mapped[int | None] = mapped_column(Integer)
    source_offset: Mapped[int | None] = mapped_column(BigInteger)
    # A Kafka key is bytes, stored as they came; the text rendering is there where the key is
    # text (valid UTF-8, no NUL), for display and queries.
    source_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    source_key_text: Mapped[str | None] = mapped_column(Text)
    # The Schema Registry id the value was decoded with (None for JSON and text), and the
    # source headers passed through (--pass-headers: by default the W3C trace context).
    schema_id: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    record_id: Mapped[str | None] = mapped_column(String(255), index=True)
    input_text: Mapped[str] = mapped_column(Text)
    input_extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(String(255))
    score: Mapped[float | None] = mapped_column(Float)
    output: Mapped[dict[str, Any]] = mapped_column(JSON)
    message_timestamp: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class DeadLetterRow(Base):
    """A message that could not be turned into a prediction: its raw bytes and the reason."""

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint(*SOURCE_KEY, name="uq_dead_letters_source"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    source_topic: Mapped[str] = mapped_column(String(255))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    source_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(32))
    message_timestamp: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    replayed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class TombstoneRow(Base):
    """A null-valued message (a deletion marker on a compacted topic): skipped, not predicted, but
    recorded with its key, so operators can count them and see which keys were deleted."""

    __tablename__ = "tombstones"
    __table_args__ = (UniqueConstraint(*TOMBSTONE_KEY, name="uq_tombstones_source"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    source_topic: Mapped[str] = mapped_column(String(255))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    source_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    message_timestamp: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class TrainingRunRow(Base):
    """A training, distillation or evaluation run: parameters, per-epoch metrics, outcome."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str | None] = mapped_column(String(255))
    base_model: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[list[Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)
    # Where the run's process is: a "running" run whose process is gone was killed (see mark_lost_runs).
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)


class ModelRow(Base):
    """A model nlpkit produced or was told about, loadable by name."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; nlpkit only ever stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
