"""Shared fixtures: tiny random models built on the fly, fresh databases, a clean plugin state.

The Kafka broker and a migrated SQLite database come from ``nlpkit.pytest_plugin`` (entry point
``pytest11``), so nlpkit's tests use the same fixtures as a plugin's tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nlpkit import plugins
from nlpkit.store import Database
from nlpkit.testing import save_tiny_distilbert

pytest_plugins = ["services_fixtures"]

SENTIMENT_LABELS = ["negative", "positive"]


@pytest.fixture(scope="session")
def sentiment_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random sentiment model (max 64 positions, so long inputs are cheap to test)."""
    return save_tiny_distilbert(tmp_path_factory.mktemp("models") / "tiny-sentiment", labels=SENTIMENT_LABELS)


@pytest.fixture
def sentiment_copy(tmp_path: Path, sentiment_model_dir: Path) -> Path:
    """A private copy of the tiny sentiment model: the ONNX backends write their files beside it."""
    return Path(shutil.copytree(sentiment_model_dir, tmp_path / "model"))


@pytest.fixture
def nlpkit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated NLPKIT_HOME (default SQLite database, models dir) for one test."""
    home = tmp_path / "nlpkit-home"
    monkeypatch.setenv("NLPKIT_HOME", str(home))
    monkeypatch.delenv("NLPKIT_DATABASE_URL", raising=False)
    return home


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nlpkit.db'}"


@pytest.fixture
def database(nlpkit_database: Database) -> Database:
    """A migrated SQLite database: the ``nlpkit_database`` fixture plugin authors get (nlpkit.pytest_plugin)."""
    return nlpkit_database


@pytest.fixture
def fresh_plugins():
    """Reload plugins around a test that changes which ones load."""
    plugins.reset()
    yield plugins
    plugins.reset()
