"""The database: tables, connections and idempotent batched writes.

SQLite is the embedded default, PostgreSQL the production database; the schema is
created and changed only by the Alembic migrations in ``migrations/`` (``nlpkit db
upgrade``). Rows that come from Kafka are keyed by (topic, partition, offset, task)
and written with an upsert, so a batch replayed after a crash overwrites itself
instead of duplicating: at-least-once delivery becomes an exactly-once effect.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
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
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from nlpkit.errors import DatabaseNotReadyError, NlpkitError
from nlpkit.system.termination import sigterm_interrupts

SQLITE_BUSY_TIMEOUT_S = 5

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


# Where a row came from: the key that makes replayed writes overwrite instead of duplicate.
SOURCE_KEY = ("source_topic", "source_partition", "source_offset", "task")
# A tombstone belongs to no task: one row per message.
TOMBSTONE_KEY = ("source_topic", "source_partition", "source_offset")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


@dataclass(frozen=True)
class ModelEntry:
    """A registered model as the rest of nlpkit sees it (detached from any session)."""

    name: str
    task: str
    path: Path
    revision: str
    base_model: str | None
    metrics: dict[str, Any] | None
    created_at: dt.datetime
    training_run_id: int | None = None  # the run that produced it; None for converted or copied models

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: paths and times as strings."""
        return {
            "name": self.name,
            "task": self.task,
            "path": str(self.path),
            "revision": self.revision,
            "base_model": self.base_model,
            "metrics": self.metrics,
            "created_at": self.created_at.isoformat(),
            "training_run_id": self.training_run_id,
        }


@dataclass(frozen=True)
class RunEntry:
    """One training, distillation or evaluation run as recorded: what was asked (params), what each
    evaluation measured (metrics, in order), how it ended, how long it took, and where it ran."""

    id: int
    kind: str
    task: str
    model_name: str | None
    base_model: str | None
    params: dict[str, Any]
    metrics: list[Any]
    status: str
    error: str | None
    started_at: dt.datetime
    duration_s: float | None
    host: str | None
    pid: int | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": self.started_at.isoformat()}


@dataclass
class StoredBatch:
    """What one worker transaction stored; passed to the ``predictions_stored`` hook."""

    task: str
    model: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    topic_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class Database:
    """A connection pool plus the few operations nlpkit needs, for SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions.begin() as session:
            yield session

    def reachable(self) -> bool:
        """Whether a trivial query succeeds right now (for health checks)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def check_schema(self) -> None:
        """Refuse to run against a database the migrations have not brought up to date."""
        from nlpkit import dbmigrate

        current, head = dbmigrate.current_revision(self.engine), dbmigrate.head_revision()
        if current != head:
            state = "has no nlpkit tables" if current is None else f"is at revision {current}, not {head}"
            raise DatabaseNotReadyError(f"database {redact_url(self.url)} {state}; run `nlpkit db upgrade` first")

    def write_batch(
        self,
        predictions: Sequence[dict[str, Any]],
        dead_letters: Sequence[dict[str, Any]],
        tombstones: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Upsert predictions, dead letters and tombstones in one transaction."""
        with self.session() as session:
            upsert(session, PredictionRow, predictions, SOURCE_KEY)
            upsert(session, DeadLetterRow, dead_letters, SOURCE_KEY)
            upsert(session, TombstoneRow, tombstones, TOMBSTONE_KEY)

    # --- model registry --------------------------------------------------------

    def register_model(
        self,
        *,
        name: str,
        task: str,
        path: Path,
        revision: str,
        base_model: str | None = None,
        metrics: dict[str, Any] | None = None,
        training_run_id: int | None = None,
    ) -> None:
        """Record a model under ``name``; registering a name again points it at the new files."""
        row = {
            "name": name,
            "task": task,
            "path": str(Path(path).resolve()),
            "revision": revision,
            "base_model": base_model,
            "metrics": metrics,
            "training_run_id": training_run_id,
            "created_at": utcnow(),
        }
        with self.session() as session:
            upsert(session, ModelRow, [row], ("name",))

    def find_model(self, name: str) -> ModelEntry | None:
        with self.session() as session:
            row = session.scalar(select(ModelRow).where(ModelRow.name == name))
            return _entry(row) if row else None

    def list_models(self, task: str | None = None) -> list[ModelEntry]:
        """Registered models, newest first."""
        query = select(ModelRow).order_by(ModelRow.created_at.desc(), ModelRow.id.desc())
        if task:
            query = query.where(ModelRow.task == task)
        with self.session() as session:
            return [_entry(row) for row in session.scalars(query)]

    def remove_model(self, name: str) -> bool:
        """Forget a registered model; False when no model has that name."""
        with self.session() as session:
            row = session.scalar(select(ModelRow).where(ModelRow.name == name))
            if row is None:
                return False
            session.delete(row)
            return True

    def model_path(self, name: str) -> Path | None:
        """A ``ModelLookup`` for :func:`nlpkit.inference.loading.load_model`."""
        entry = self.find_model(name)
        return entry.path if entry else None

    # --- training runs ------------------------------------------------------------

    @contextmanager
    def recorded_run(
        self, *, kind: str, task: str, model_name: str | None, base_model: str | None, params: dict[str, Any]
    ) -> Iterator[int]:
        """A run row for the duration of a block: succeeded, failed (with the error) or
        interrupted (Ctrl-C, or SIGTERM: see :mod:`nlpkit.system.termination`)."""
        run_id = self.start_run(kind=kind, task=task, model_name=model_name, base_model=base_model, params=params)
        try:
            with sigterm_interrupts():
                yield run_id
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.finish_run(run_id, status, error=f"{type(exc).__name__}: {exc}")
            raise
        self.finish_run(run_id, "succeeded")

    def start_run(
        self, *, kind: str, task: str, model_name: str | None, base_model: str | None, params: dict[str, Any]
    ) -> int:
        with self.session() as session:
            run = TrainingRunRow(
                kind=kind,
                task=task,
                model_name=model_name,
                base_model=base_model,
                params=params,
                metrics=[],
                status="running",
                started_at=utcnow(),
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            session.add(run)
            session.flush()
            return run.id

    def find_run(self, run_id: int) -> RunEntry | None:
        with self.session() as session:
            row = session.get(TrainingRunRow, run_id)
            return _run_entry(row) if row else None

    def list_runs(self, *, model_name: str | None = None, limit: int | None = None) -> list[RunEntry]:
        """Recorded runs, newest first; only those for ``model_name`` when given."""
        query = select(TrainingRunRow).order_by(TrainingRunRow.id.desc()).limit(limit)
        if model_name:
            query = query.where(TrainingRunRow.model_name == model_name)
        with self.session() as session:
            return [_run_entry(row) for row in session.scalars(query)]

    def record_run_metrics(self, run_id: int, metrics: list[dict[str, Any]]) -> None:
        with self.session() as session:
            session.get_one(TrainingRunRow, run_id).metrics = list(metrics)

    def mark_lost_runs(self) -> list[int]:
        """Mark "lost" every run recorded as running on this host whose process is gone, and
        return their ids. Ctrl-C and SIGTERM are recorded by the run itself; SIGKILL, the OOM
        killer or a crash of the interpreter leave no chance to, and without this the run
        would read "running" forever. Runs on other hosts are left as they are: their
        processes cannot be seen from here."""
        host = socket.gethostname()
        query = select(TrainingRunRow.id, TrainingRunRow.pid).where(
            TrainingRunRow.status == "running", TrainingRunRow.host == host
        )
        lost = []
        with self.session() as session:
            gone = [(run_id, pid) for run_id, pid in session.execute(query) if not _process_exists(pid)]
            for run_id, pid in gone:
                # Only while still "running": a run that recorded its outcome just before exiting keeps it.
                marked = session.execute(
                    update(TrainingRunRow)
                    .where(TrainingRunRow.id == run_id, TrainingRunRow.status == "running")
                    .values(status="lost", error=f"process {pid} on {host} ended without recording an outcome")
                )
                if marked.rowcount:
                    lost.append(run_id)
        return lost

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        with self.session() as session:
            run = session.get_one(TrainingRunRow, run_id)
            run.status = status
            run.error = error
            run.finished_at = utcnow()
            run.duration_s = (run.finished_at - as_utc(run.started_at)).total_seconds()

    def count(self, row_class: type[Base], **filters: Any) -> int:
        query = select(func.count()).select_from(row_class)
        for column, value in filters.items():
            query = query.where(getattr(row_class, column) == value)
        with self.session() as session:
            return int(session.scalar(query) or 0)

    def dispose(self) -> None:
        self.engine.dispose()


def upsert(session: Session, row_class: type[Base], rows: Sequence[dict[str, Any]], key: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE for every row, as one executemany."""
    if not rows:
        return
    table = row_class.__table__
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(session.bind.dialect.name)
    if insert is None:
        raise NlpkitError(f"unsupported database '{session.bind.dialect.name}': use SQLite or PostgreSQL")
    statement = insert(table)
    updates = {name: statement.excluded[name] for name in rows[0] if name not in key}
    session.execute(statement.on_conflict_do_update(index_elements=list(key), set_=updates), list(rows))


def make_engine(url: str) -> Engine:
    """An SQLAlchemy engine; SQLite gets WAL and a busy timeout so several workers can share it."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise NlpkitError(f"invalid database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # A writer waits this long for another's lock, then the worker's retry loop takes over:
        # it keeps polling Kafka between attempts, which a longer wait inside SQLite would not.
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        # A database that does not answer should fail a command (or a health check) in seconds, not hang it.
        timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
        return create_engine(parsed, pool_pre_ping=True, connect_args=timeout)
    except (SQLAlchemyError, ImportError) as exc:
        raise NlpkitError(f"cannot use database {redact_url(url)}: {exc}") from exc


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# scheme://anything up to whitespace or a quote, not ending in the punctuation of the sentence around it.
URL_IN_TEXT = re.compile(r"\b[\w+]+://[^\s'\"]*[^\s'\":,.;)]")


def redact_urls_in(text: str) -> str:
    """``text`` with the password of every URL in it masked: for any message that may quote one."""
    return URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def redact_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<invalid database URL>"


def _entry(row: ModelRow) -> ModelEntry:
    return ModelEntry(
        name=row.name,
        task=row.task,
        path=Path(row.path),
        revision=row.revision,
        base_model=row.base_model,
        metrics=row.metrics,
        created_at=row.created_at,
        training_run_id=row.training_run_id,
    )


def _run_entry(row: TrainingRunRow) -> RunEntry:
    """The row's columns of the same names; times in UTC whatever the database hands back."""
    columns = {column.name: getattr(row, column.name) for column in fields(RunEntry)}
    return RunEntry(**columns | {"started_at": as_utc(row.started_at)})


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only the existence check is made
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def as_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; nlpkit only ever stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
