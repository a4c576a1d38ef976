"""Real services for the test session: an Apache Kafka broker and a PostgreSQL server.

Loaded with ``pytest_plugins = ["services_fixtures"]`` (``tests`` on pythonpath). Each service
starts once per session on free ports in a fresh directory. A service that cannot start
makes the tests that need it fail with the reason and the service's log tail; they never
skip, because a skipped integration suite looks green while testing nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nlpkit.localservices.kafka import KafkaBroker
from nlpkit.localservices.postgres import PostgresServer


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A running single-node broker; tests use unique topic and group names to share it."""
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


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
