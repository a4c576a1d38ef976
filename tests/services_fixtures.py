"""A real PostgreSQL server for the test session.

Loaded with ``pytest_plugins = ["services_fixtures"]`` (``tests`` on pythonpath). The server
starts once per session on a free port in a fresh directory. If it cannot start, the tests
that need it fail with the reason and the server's log tail; they never skip, because a
skipped integration suite looks green while testing nothing. The Kafka broker fixture,
``kafka_broker``, comes from ``nlpkit.pytest_plugin``, the fixture plugin that plugin
authors get too.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nlpkit.localservices.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server; ask it for a database per test (see ``postgres_url``).

    Its directory comes from mkdtemp rather than tmp_path_factory: as root the server runs as
    the postgres account, which cannot enter pytest's private /tmp/pytest-of-root.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="nlpkit-pg-"))
    try:
        with PostgresServer(data_dir) as server:
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of an empty database of this test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)
