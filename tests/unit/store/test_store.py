"""Storage: migrations are the only schema source, writes are idempotent upserts."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from nlpkit.errors import DatabaseNotReadyError, redact_url
from nlpkit.store import (
    Base,
    Database,
    DeadLetterRow,
    ModelRow,
    PredictionRow,
    TrainingRunRow,
    migrated_database,
    migrations,
    utcnow,
)


def prediction(offset: int, label: str = "positive", **overrides):
    row = {
        "task": "sentiment",
        "model_name": "m",
        "model_revision": "abc",
        "backend": "torch",
        "source_topic": "reviews",
        "source_partition": 0,
        "source_offset": offset,
        "source_key": None,
        "source_key_text": None,
        "record_id": str(offset),
        "input_text": f"text {offset}",
        "input_extra": None,
        "label": label,
        "score": 0.9,
        "output": {"label": label, "score": 0.9},
        "message_timestamp": utcnow(),
        "stored_at": utcnow(),
    }
    return row | overrides


def dead_letter(offset: int):
    return {
        "task": "sentiment",
        "source_topic": "reviews",
        "source_partition": 0,
        "source_offset": offset,
        "source_key": b"\xff",
        "raw_value": b"\x00\xfe raw",
        "reason": "not valid UTF-8",
        "stage": "decode",
        "message_timestamp": None,
        "stored_at": utcnow(),
        "replayed_at": None,
    }


def check_migrations_match_models(database: Database) -> None:
    with database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_migrations_build_exactly_the_mapped_schema_on_sqlite(database):
    check_migrations_match_models(database)


@pytest.mark.integration
def test_migrations_build_exactly_the_mapped_schema_on_postgresql(postgres_url):
    database = migrated_database(postgres_url)
    check_migrations_match_models(database)
    migrations.downgrade(database.engine, "base")
    assert migrations.current_revision(database.engine) is None
    database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database_url(request, sqlite_url) -> str:
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_keys_stored_as_text_carry_over_to_bytes_and_back(any_database_url):
    database = Database(any_database_url)
    database.upgrade("0002")
    # A row as revision 0002 stored it: the key as text.
    old = {name: value for name, value in prediction(0).items() if name != "source_key_text"}
    old |= {"source_key": "clé", "input_extra": None, "output": "{}"}
    with database.engine.begin() as connection:
        placeholders = ", ".join(f":{name}" for name in old)
        connection.execute(text(f"INSERT INTO predictions ({', '.join(old)}) VALUES ({placeholders})"), old)
    database.upgrade()
    database.write_batch([prediction(1, source_key=b"\x00\x00\x00\x00\x07k", source_key_text=None)], [])
    with database.session() as session:
        keys = session.execute(select(PredictionRow.source_key, PredictionRow.source_key_text)).all()
    assert sorted(keys) == [(b"\x00\x00\x00\x00\x07k", None), ("clé".encode(), "clé")]

    migrations.downgrade(database.engine, "0002")
    with database.engine.connect() as connection:
        texts = sorted(connection.execute(text("SELECT source_key FROM predictions")).scalars())
    assert texts == ["clé", "hex:00000000076b"]  # a binary key has no text: shown as its bytes
    database.upgrade()
    check_migrations_match_models(database)
    database.dispose()


def test_an_unmigrated_database_is_refused_with_the_command_to_run(sqlite_url):
    with pytest.raises(DatabaseNotReadyError, match="run `nlpkit db upgrade`"):
        Database(sqlite_url).check_schema()


def write_and_replay(database: Database) -> None:
    database.write_batch([prediction(0), prediction(1)], [dead_letter(2)])
    # The same batch again (a replay after a crash), with a changed label: overwritten, not duplicated.
    database.write_batch([prediction(0, label="negative"), prediction(1)], [dead_letter(2)])
    assert database.count(PredictionRow) == 2
    assert database.count(DeadLetterRow) == 1
    with database.session() as session:
        labels = dict(session.execute(select(PredictionRow.source_offset, PredictionRow.label)).all())
        raw = session.scalar(select(DeadLetterRow.raw_value))
    assert labels == {0: "negative", 1: "positive"}
    assert raw == b"\x00\xfe raw"


def test_writes_are_idempotent_upserts_on_sqlite(database):
    write_and_replay(database)


@pytest.mark.integration
def test_writes_are_idempotent_upserts_on_postgresql(postgres_url):
    database = migrated_database(postgres_url)
    write_and_replay(database)
    database.dispose()


def test_model_registry_round_trip(database, tmp_path):
    database.models.register(name="m", task="sentiment", path=tmp_path, revision="r1", metrics={"accuracy": 0.9})
    database.models.register(name="m", task="sentiment", path=tmp_path, revision="r2")
    [entry] = database.models.list("sentiment")
    assert (entry.name, entry.revision, entry.path) == ("m", "r2", tmp_path.resolve())
    assert database.models.path("m") == tmp_path.resolve()
    assert database.models.remove("m") is True
    assert database.models.find("m") is None
    assert database.models.remove("m") is False


def stored_model_path(database: Database, name: str) -> str:
    """The ``models.path`` column as written, not as the registry resolves it."""
    with database.engine.connect() as connection:
        return connection.execute(text("SELECT path FROM models WHERE name = :name"), {"name": name}).scalar_one()


def test_a_model_in_the_models_dir_is_stored_relative_and_found_where_that_dir_is_mounted(
    database, nlpkit_home, tmp_path, monkeypatch
):
    monkeypatch.delenv("NLPKIT_MODELS_DIR", raising=False)
    model = nlpkit_home / "models" / "sentiment" / "sst2-minilm"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    database.models.register(name="sst2", task="sentiment", path=model, revision="r1")

    assert stored_model_path(database, "sst2") == "sentiment/sst2-minilm"
    assert database.models.path("sst2") == model.resolve()

    mounted = tmp_path / "container" / "mnt" / "models"  # the same directory, mounted elsewhere
    shutil.copytree(nlpkit_home / "models", mounted)
    shutil.rmtree(nlpkit_home / "models")
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(mounted))

    [entry] = database.models.list("sentiment")
    assert entry.path == (mounted / "sentiment" / "sst2-minilm").resolve()
    assert (entry.path / "config.json").is_file()
    assert database.models.find("sst2").as_dict()["path"] == str(entry.path)
    assert database.models.path("sst2") == entry.path


def test_a_model_outside_the_models_dir_is_stored_by_its_absolute_path(database, nlpkit_home, tmp_path, monkeypatch):
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(tmp_path / "models"))
    elsewhere = tmp_path / "elsewhere" / "m"
    elsewhere.mkdir(parents=True)
    database.models.register(name="m", task="sentiment", path=elsewhere, revision="r1")

    assert stored_model_path(database, "m") == str(elsewhere.resolve())
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(tmp_path / "other-models"))
    assert database.models.path("m") == elsewhere.resolve()


def test_the_models_dir_itself_is_stored_by_its_absolute_path(database, tmp_path, monkeypatch):
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    database.models.register(name="m", task="sentiment", path=tmp_path / "models", revision="r1")
    assert stored_model_path(database, "m") == str((tmp_path / "models").resolve())


def test_a_row_written_with_an_absolute_path_inside_the_models_dir_still_resolves(
    database, nlpkit_home, tmp_path, monkeypatch
):
    monkeypatch.delenv("NLPKIT_MODELS_DIR", raising=False)
    model = (nlpkit_home / "models" / "old").resolve()
    model.mkdir(parents=True)
    with database.engine.begin() as connection:  # as registries before relative paths wrote it
        connection.execute(
            ModelRow.__table__.insert(),
            {"name": "old", "task": "sentiment", "path": str(model), "revision": "r0", "created_at": utcnow()},
        )
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(tmp_path / "mounted-elsewhere"))
    assert database.models.path("old") == model
    [entry] = database.models.list()
    assert (entry.name, entry.path) == ("old", model)


def test_training_runs_record_status_metrics_and_duration(database):
    run_id = database.runs.start(kind="train", task="sentiment", model_name="m", base_model="b", params={"lr": 1e-4})
    database.runs.record_metrics(run_id, [{"epoch": 1, "accuracy": 0.8}])
    database.runs.finish(run_id, "succeeded")
    with database.session() as session:
        run = session.get_one(TrainingRunRow, run_id)
        assert (run.status, run.metrics, run.params) == ("succeeded", [{"epoch": 1, "accuracy": 0.8}], {"lr": 1e-4})
        assert run.duration_s is not None and run.duration_s >= 0


def test_passwords_are_masked_in_urls():
    assert redact_url("postgresql+psycopg://nlpkit:s3cret@127.0.0.1:5433/nlpkit") == (
        "postgresql+psycopg://nlpkit:***@127.0.0.1:5433/nlpkit"
    )


def run_in_a_child(database: Database) -> subprocess.Popen:
    """A process inside a recorded run of model 'm', started and waiting to be signalled."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from nlpkit.store import Database\n"
            "with Database(sys.argv[1]).runs.recorded(kind='train', task='sentiment', model_name='m',"
            " base_model=None, params={}):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n",
            database.url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "ready\n"
    return child


def test_a_run_stopped_by_sigterm_is_recorded_as_interrupted(database):
    """`kill`, a scheduler or a container runtime stops a run with SIGTERM; it must not stay "running"."""
    child = run_in_a_child(database)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) != 0
    [run] = database.runs.list(model_name="m")
    assert (run.status, run.error) == ("interrupted", "Terminated: received SIGTERM")
    assert run.duration_s is not None


def test_a_run_whose_process_was_killed_outright_is_marked_lost(database):
    """SIGKILL and the OOM killer give a run no chance to record anything; the next look at the
    runs table from the same host finds its process gone."""
    child = run_in_a_child(database)
    [killed] = database.runs.list(model_name="m")
    assert (killed.status, killed.host, killed.pid) == ("running", socket.gethostname(), child.pid)
    database.runs.start(kind="train", task="sentiment", model_name="alive", base_model=None, params={})
    elsewhere = database.runs.start(kind="train", task="sentiment", model_name="elsewhere", base_model=None, params={})
    with database.session() as session:
        session.get_one(TrainingRunRow, elsewhere).host = "another-host"
    assert database.runs.mark_lost() == []  # the child still runs
    child.kill()
    child.wait(timeout=30)
    assert database.runs.mark_lost() == [killed.id]
    assert database.runs.mark_lost() == []
    status = {run.model_name: (run.status, run.error) for run in database.runs.list()}
    assert status == {
        "m": ("lost", f"process {child.pid} on {socket.gethostname()} ended without recording an outcome"),
        "alive": ("running", None),
        "elsewhere": ("running", None),  # its process cannot be seen from here
    }


def test_sigterm_handling_is_confined_to_the_run(database):
    before = signal.getsignal(signal.SIGTERM)
    with database.runs.recorded(kind="train", task="sentiment", model_name="m", base_model=None, params={}):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    [run] = database.runs.list(model_name="m")
    assert run.status == "succeeded"
