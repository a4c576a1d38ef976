"""A PostgreSQL database not encoded UTF-8 is refused with one line, before any migration runs.

A cluster initialised with the default (C/POSIX) locale has encoding SQL_ASCII; psycopg then
returns text as bytes and SQLAlchemy used to crash on its first query with a TypeError.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from nlpkit.errors import NlpkitError
from nlpkit.localservices.postgres import PG_PASSWORD, PG_USER
from nlpkit.store import Database, migrated_database, migrations

pytestmark = pytest.mark.integration


@pytest.fixture
def sql_ascii_url(postgres_server):
    """SQLAlchemy URL of an empty database encoded SQL_ASCII, dropped afterwards."""
    name = f"test_ascii_{uuid.uuid4().hex[:16]}"
    with postgres_server._admin_connection() as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    try:
        yield postgres_server.url_for(name)
    finally:
        postgres_server.drop_database(name)


def conninfo(server, name: str) -> str:
    return f"host=127.0.0.1 port={server.port} user={PG_USER} password={PG_PASSWORD} dbname={name}"


def db_upgrade(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nlpkit", "db", "upgrade", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_upgrade_refuses_a_sql_ascii_database_with_one_line(sql_ascii_url):
    result = db_upgrade(sql_ascii_url)

    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("Error: "), line
    assert "SQL_ASCII" in line and "UTF-8" in line and "ENCODING 'UTF8'" in line, line
    assert "Traceback" not in result.stderr + result.stdout
    assert f":{PG_PASSWORD}@" not in line and ":***@" in line, line


def test_the_store_refuses_it_on_every_path_and_creates_nothing(postgres_server, sql_ascii_url):
    with pytest.raises(NlpkitError, match=r"is encoded SQL_ASCII, not UTF-8"):
        migrated_database(sql_ascii_url)
    database = Database(sql_ascii_url)
    try:
        with pytest.raises(NlpkitError, match=r"is encoded SQL_ASCII, not UTF-8"):
            database.check_schema()
    finally:
        database.dispose()
    name = make_url(sql_ascii_url).database
    with psycopg.connect(conninfo(postgres_server, name), autocommit=True) as connection:
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_a_utf8_database_still_upgrades(postgres_url):
    result = db_upgrade(postgres_url)

    assert result.returncode == 0, result.stderr
    database = Database(postgres_url)
    try:
        database.check_schema()
        assert migrations.current_revision(database.engine) == migrations.head_revision()
    finally:
        database.dispose()
