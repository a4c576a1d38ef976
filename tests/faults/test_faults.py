"""Fault injection against real services: the broker restarts, the database goes away or is
locked, a row is poison, a batch is slow. Through all of it every good message is stored
exactly once, every bad one is a dead letter, and the worker keeps its group membership.

These tests start services of their own (a broker, a PostgreSQL server) because they stop
them mid-test; the session's shared services stay untouched for the other tests.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from workers import migrated, start_worker, stop, unique, wait_for

from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.localservices.kafka import KafkaBroker
from nlpkit.localservices.postgres import PostgresServer
from nlpkit.store import Database, DeadLetterRow, PredictionRow
from nlpkit.stream.kafka_clients import create_topic, produce
from nlpkit.stream.lag import consumer_lag
from nlpkit.stream.worker import Worker, WorkerConfig
from nlpkit.testing import run_through_worker
from nlpkit_plugins.sentiment import SentimentTask

pytestmark = pytest.mark.integration

# Short group timeouts, so that a worker which stopped polling would really be thrown out
# (and the tests would see the rebalance) within the time a fault lasts.
TIGHT_GROUP = ["-X", "session.timeout.ms=6000", "-X", "max.poll.interval.ms=12000"]


def reviews(count: int) -> list[tuple[bytes, bytes]]:
    return [(f"r{i}".encode(), json.dumps({"id": f"r{i}", "text": f"review {i}: fine"}).encode()) for i in range(count)]


def rows_and_ids(database: Database) -> tuple[int, int]:
    """(rows, distinct record ids) among the predictions; equal when nothing is duplicated."""
    with database.session() as session:
        rows = session.scalar(select(func.count()).select_from(PredictionRow))
        distinct = session.scalar(select(func.count(func.distinct(PredictionRow.record_id))))
    return int(rows), int(distinct)


def total_committed(bootstrap: str, group: str, topic: str) -> int:
    return sum(row.committed or 0 for row in consumer_lag(bootstrap, groups=[group], topics=[topic]))


def test_the_worker_rides_out_a_broker_restart(tmp_path, sentiment_model_dir):
    broker = KafkaBroker(tmp_path / "kafka").start()
    try:
        bootstrap, topic, group = broker.bootstrap_servers, unique("restart"), unique("group")
        create_topic(bootstrap, topic, partitions=3)
        produce(bootstrap, topic, reviews(5000))
        database = migrated(f"sqlite:///{tmp_path / 'restart.db'}")
        worker = start_worker(topic, group, bootstrap, database.url, sentiment_model_dir, "--batch-size", "100")
        wait_for(lambda: rows_and_ids(database)[0] >= 500, 120, "the first rows", [worker])
        broker.stop()
        time.sleep(5)
        assert worker.poll() is None, "the worker gave up while the broker was down"
        broker.start()
        wait_for(lambda: rows_and_ids(database)[0] >= 5000, 240, "every message stored", [worker])
        wait_for(lambda: total_committed(bootstrap, group, topic) == 5000, 60, "offsets committed", [worker])
        stop(worker)
        assert rows_and_ids(database) == (5000, 5000)
        assert database.count(DeadLetterRow) == 0
    finally:
        broker.stop()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server this test may stop and start (the shared one must stay up)."""
    data_dir = Path(tempfile.mkdtemp(prefix="nlpkit-pg-fault-"))
    server = PostgresServer(data_dir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def revocations(output: str) -> int:
    """Partitions taken away before the worker was asked to stop (leaving at the end gives them back once)."""
    return output.split("received SIGTERM")[0].count("revoked ")


def test_a_postgresql_outage_is_retried_without_committing_or_leaving_the_group(
    kafka_broker, own_postgres, sentiment_model_dir
):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("pg-outage"), unique("group")
    create_topic(bootstrap, topic, partitions=2)
    produce(bootstrap, topic, reviews(2000))
    database = migrated(own_postgres.url)
    extra = ["--batch-size", "50", *TIGHT_GROUP]
    worker = start_worker(topic, group, bootstrap, own_postgres.url, sentiment_model_dir, *extra)
    wait_for(lambda: rows_and_ids(database)[0] >= 200, 120, "the first rows", [worker])
    database.dispose()
    own_postgres.stop()
    committed_at_outage = total_committed(bootstrap, group, topic)
    time.sleep(20)  # well past max.poll.interval.ms=12000, and several retries long
    assert worker.poll() is None, "the worker gave up while the database was down"
    assert total_committed(bootstrap, group, topic) <= committed_at_outage + 50, "offsets moved with no database"
    own_postgres.start()
    wait_for(lambda: rows_and_ids(database)[0] >= 2000, 180, "every message stored", [worker])
    wait_for(lambda: total_committed(bootstrap, group, topic) == 2000, 60, "offsets committed", [worker])
    output = stop(worker)
    assert "database unavailable" in output
    assert revocations(output) == 0, output  # never thrown out of the group
    assert rows_and_ids(database) == (2000, 2000)
    database.dispose()


def test_a_locked_sqlite_database_is_waited_out_without_leaving_the_group(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("locked"), unique("group")
    create_topic(bootstrap, topic, partitions=2)
    produce(bootstrap, topic, reviews(1500))
    path = tmp_path / "locked.db"
    database = migrated(f"sqlite:///{path}")
    extra = ["--batch-size", "50", *TIGHT_GROUP]
    worker = start_worker(topic, group, bootstrap, database.url, sentiment_model_dir, *extra)
    wait_for(lambda: rows_and_ids(database)[0] >= 200, 120, "the first rows", [worker])
    blocker = sqlite3.connect(path, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")
    committed_while_locked = total_committed(bootstrap, group, topic)
    time.sleep(20)  # well past max.poll.interval.ms=12000: only polling during the waits keeps the worker in
    stuck = total_committed(bootstrap, group, topic)
    blocker.rollback()
    blocker.close()
    assert stuck <= committed_while_locked + 50, "offsets moved while nothing could be stored"
    wait_for(lambda: rows_and_ids(database)[0] >= 1500, 180, "every message stored", [worker])
    output = stop(worker)
    assert "database unavailable" in output and "database is locked" in output
    assert revocations(output) == 0, output  # never thrown out of the group
    assert rows_and_ids(database) == (1500, 1500)
    database.dispose()


def test_a_row_the_database_rejects_is_the_only_dead_letter_of_its_batch(postgres_url, sentiment_model_dir):
    """PostgreSQL refuses NUL characters in text; the message carrying one becomes a dead letter
    with the database's reason, and the rest of its batch is stored."""
    messages = [{"id": f"m{i}", "text": f"review {i}"} for i in range(40)]
    messages[17] = {"id": "poison", "text": "nul \u0000 inside"}
    run = run_through_worker("sentiment", sentiment_model_dir, messages, database_url=postgres_url, batch_size=40)
    assert sorted(row["record_id"] for row in run.predictions) == sorted(f"m{i}" for i in range(40) if i != 17)
    assert len(run.dead_letters) == 1
    letter = run.dead_letters[0]
    assert letter["stage"] == "store" and "database rejected the row" in letter["reason"]
    assert letter["raw_value"] == json.dumps(messages[17]).encode()


class SlowEngine:
    """A real engine that takes ``seconds`` per chunk of eight records, reporting progress as it goes:
    a stand-in for a big model on long reviews."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.engine, self.seconds = engine, seconds
        self.task, self.loaded = engine.task, engine.loaded

    def start(self, records):
        return SlowRun(self, records)


class SlowRun:
    """A run whose work all happens when the outcomes are asked for, so the worker's own thread is
    inside the slow batch throughout: the keep-alive polls are all that keep it in its group."""

    def __init__(self, slow: SlowEngine, records) -> None:
        self.slow, self.records = slow, records

    def outcomes(self, progress=None):
        outcomes, records = [], self.records
        for start in range(0, len(records), 8):
            time.sleep(self.slow.seconds)
            outcomes += self.slow.engine.run(records[start : start + 8])
            if progress is not None:
                progress(len(records[start : start + 8]))
        return outcomes

    def cancel(self) -> None:
        """Nothing runs before the outcomes are asked for: nothing to drop."""


def test_a_batch_slower_than_the_poll_interval_causes_no_rebalance(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("slow"), unique("group")
    create_topic(bootstrap, topic, partitions=2)
    produce(bootstrap, topic, reviews(240))
    database = migrated(f"sqlite:///{tmp_path / 'slow.db'}")
    task = SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))
    slow = SlowEngine(Engine(task), seconds=0.6)  # 120 records a batch: about 9 s, past the 6 s poll interval
    config = WorkerConfig(
        topics=[topic],
        group=group,
        bootstrap_servers=bootstrap,
        batch_size=120,
        max_messages=240,
        consumer_config={"session.timeout.ms": 6000, "max.poll.interval.ms": 6000},
    )
    worker = Worker(config, {"sentiment": slow}, database)
    revoked_after: list[int] = []  # messages processed when partitions were taken away
    original = worker._on_revoke
    worker._on_revoke = lambda consumer, parts: (revoked_after.append(worker.stats.messages), original(consumer, parts))
    stats = worker.run()
    assert stats.messages == 240 and stats.predictions == 240
    # Closing the consumer at the end gives the partitions back once; nothing may before that.
    assert revoked_after == [240], "the group rebalanced while a slow batch was running"
    assert rows_and_ids(database) == (240, 240)
    database.dispose()


def test_a_worker_stopped_during_an_outage_commits_nothing_it_did_not_store(
    kafka_broker, own_postgres, sentiment_model_dir
):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("stop-outage"), unique("group")
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, reviews(5000))  # far more than it can store before the outage begins
    database = migrated(own_postgres.url)
    worker = start_worker(topic, group, bootstrap, own_postgres.url, sentiment_model_dir, "--batch-size", "20")
    wait_for(lambda: rows_and_ids(database)[0] >= 40, 120, "the first rows", [worker])
    database.dispose()
    own_postgres.stop()
    time.sleep(3)
    output = stop(worker)
    assert "will be delivered again" in output
    committed = total_committed(bootstrap, group, topic)
    own_postgres.start()
    stored = rows_and_ids(database)[0]
    assert committed <= stored, "an offset was committed for a message that was never stored"
    database.dispose()
