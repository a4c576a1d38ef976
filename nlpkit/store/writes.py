"""Idempotent writes: every row nlpkit writes in bulk is an upsert on its natural key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from nlpkit.errors import NlpkitError
from nlpkit.store.tables import Base


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
