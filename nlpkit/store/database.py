"""The database: connections to SQLite or PostgreSQL, schema checks, and batched writes.

SQLite is the embedded default, PostgreSQL the production database; the schema is
created and changed only by the Alembic migrations in ``migrations/`` (``nlpkit db
upgrade``). Rows that come from Kafka are keyed by (topic, partition, offset, task)
and written with an upsert, so a batch replayed after a crash overwrites itself
instead of duplicating: at-least-once delivery becomes an exactly-once effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from nlpkit.errors import DatabaseNotReadyError, NlpkitError, redact_url
from nlpkit.store import migrations
from nlpkit.store.registry import RegisteredModels
from nlpkit.store.runs import RunLog
from nlpkit.store.tables import SOURCE_KEY, TOMBSTONE_KEY, Base, DeadLetterRow, PredictionRow, TombstoneRow
from nlpkit.store.writes import upsert

SQLITE_BUSY_TIMEOUT_S = 5


class Database:
    """A connection pool plus the few operations nlpkit needs, for SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.models = RegisteredModels(self.session)
        self.runs = RunLog(self.session)

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

    def upgrade(self, revision: str = "head") -> None:
        """Apply the migrations up to ``revision`` (the newest by default).

        Like every first connection of the engine, it refuses a PostgreSQL database that is not
        encoded UTF-8 (see :func:`make_engine`) before any migration runs."""
        migrations.upgrade(self.engine, revision)

    def check_schema(self) -> None:
        """Refuse to run against a database the migrations have not brought up to date."""
        current, head = migrations.current_revision(self.engine), migrations.head_revision()
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

    def count(self, row_class: type[Base], **filters: Any) -> int:
        query = select(func.count()).select_from(row_class)
        for column, value in filters.items():
            query = query.where(getattr(row_class, column) == value)
        with self.session() as session:
            return int(session.scalar(query) or 0)

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    """An SQLAlchemy engine; SQLite gets WAL and a busy timeout so several workers can share it,
    PostgreSQL a check on its first connection that the database is encoded UTF-8."""
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
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=timeout)
    except (SQLAlchemyError, ImportError) as exc:
        raise NlpkitError(f"cannot use database {redact_url(url)}: {exc}") from exc
    if parsed.get_backend_name() == "postgresql":
        # "first_connect" runs before SQLAlchemy's own first queries, which crash on a database
        # whose text comes back as bytes (SQL_ASCII); once it has passed it never runs again.
        event.listen(engine, "first_connect", _require_utf8(url))
    return engine


def _require_utf8(url: str) -> Callable[[Any, Any], None]:
    """A listener refusing a PostgreSQL database not encoded UTF-8, with one line that says how to
    make one that is (SQLite is always UTF-8)."""

    def check(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute("SHOW server_encoding")
            row = cursor.fetchone()
        finally:
            cursor.close()
        connection.rollback()
        encoding = row[0] if row else ""
        encoding = encoding.decode("ascii", "replace") if isinstance(encoding, bytes) else str(encoding)
        if encoding.upper().replace("-", "") != "UTF8":
            raise NlpkitError(
                f"database {redact_url(url)} is encoded {encoding or 'in an unknown encoding'}, not UTF-8: "
                "nlpkit stores text in any language; create it with ENCODING 'UTF8' "
                "(initdb --encoding=UTF8 or CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
            )

    return check


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrated_database(url: str) -> Database:
    """The database at ``url`` with the newest schema: what tests, fixtures, the demo and the
    benchmarks start from (``nlpkit db upgrade`` does the same for operators)."""
    database = Database(url)
    database.upgrade()
    return database
