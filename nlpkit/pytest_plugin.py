"""pytest fixtures for testing nlpkit plugins, loaded in any pytest run where nlpkit is installed.

It is registered under the ``pytest11`` entry point, so a plugin's tests get these
fixtures without a conftest, and nlpkit's own tests use the very same ones. pytest
imports this module at start-up in every project of the environment, so it imports
nothing heavy (no torch, no Kafka client): each fixture imports what it needs.

- ``kafka_broker`` (session): a real single-node Apache Kafka broker on free ports.
- ``nlpkit_database``: a migrated SQLite database of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from nlpkit.localservices.kafka import KafkaBroker
    from nlpkit.store import Database


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A running broker (KRaft, broker and controller in one JVM) shared by the session.

    Tests share it by using unique topic and group names. When it cannot start (no Java,
    no jars, a port taken) every test that asks for it fails with the reason and the
    broker's log tail; it never skips, because a skipped integration test looks green
    while testing nothing.
    """
    from nlpkit.localservices.kafka import KafkaBroker

    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture
def nlpkit_database(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in the test's temporary directory; ``.url`` is its address."""
    from nlpkit.store import migrated_database

    database = migrated_database(f"sqlite:///{tmp_path / 'nlpkit.db'}")
    yield database
    database.dispose()
