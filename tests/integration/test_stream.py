"""The Kafka worker against a real broker and real databases.

Every good message ends up as exactly one prediction row and every bad one as exactly
one dead letter, the committed offsets reach the end of the topic, and that stays
true when a worker is killed mid-stream or two workers share the partitions.
"""

from __future__ import annotations

import json
import signal

import pluggy
import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import func, select
from workers import caught_up, committed_and_end, good_message, migrated, start_worker, stop, unique, wait_for

from nlpkit import hookimpl, hookspecs
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.pipelines import load_task
from nlpkit.store import Database, DeadLetterRow, PredictionRow
from nlpkit.stream.kafka_clients import create_topic, produce
from nlpkit.stream.worker import Worker, WorkerConfig
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.sentiment import SentimentTask

pytestmark = pytest.mark.integration

MAX_BYTES = 2_000
# (value, expected reason) for each way a message can be malformed.
MALFORMED = [
    (b"\xff\xfe\xfd not utf-8", "not valid UTF-8"),
    (b'{"id": 1, "text": "unterminated', "invalid JSON"),
    (b'{"id": 2}', "missing field 'text'"),
    (b'{"id": 3, "text": "   "}', "field 'text' is empty"),
    (b'{"id": 4, "text": 42}', "field 'text' must be a string"),
    (b"x" * (MAX_BYTES + 1), "over the limit"),
    (b'{"id": 5, "text": "a fine film", "task": 7}', "field 'task' must be a string"),
    (b"", "empty value (0 bytes)"),
]


def mixed_messages(total: int) -> tuple[list[tuple[bytes | None, bytes | None]], int]:
    """``total`` messages with every malformed kind spread through them; returns (messages, bad count)."""
    messages: list[tuple[bytes | None, bytes | None]] = []
    bad = 0
    for index in range(total):
        if index % 25 == 7:  # 40 in 1000: five of each malformed kind
            value, _reason = MALFORMED[bad % len(MALFORMED)]
            messages.append((f"bad-{index}".encode(), value))
            bad += 1
        else:
            messages.append(good_message(index))
    return messages, bad


class Recorder:
    """A plugin that counts what the predictions_stored hook reports."""

    def __init__(self) -> None:
        self.predictions = self.dead_letters = 0

    @hookimpl
    def predictions_stored(self, batch) -> None:
        self.predictions += len(batch.predictions)
        self.dead_letters += len(batch.dead_letters)


def group_settled(bootstrap: str, group: str, members: int) -> bool:
    """The group has ``members`` members and every one holds partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # its futures die with it: keep it until result()
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    return len(description.members) == members and all(m.assignment.topic_partitions for m in description.members)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stream.db'}"
    return request.getfixturevalue("postgres_url")


def test_every_good_message_is_stored_once_and_every_bad_one_dead_lettered(
    kafka_broker, database_url, sentiment_model_dir
):
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("reviews"), unique("group")
    create_topic(bootstrap, topic, partitions=3)
    messages, bad = mixed_messages(1000)
    produce(bootstrap, topic, messages)
    database = migrated(database_url)
    task = SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))
    config = WorkerConfig(
        topics=[topic],
        group=group,
        bootstrap_servers=bootstrap,
        batch_size=50,
        max_messages=1000,
        max_message_bytes=MAX_BYTES,
    )
    reported = Recorder()
    manager = pluggy.PluginManager("nlpkit")
    manager.add_hookspecs(hookspecs)
    manager.register(reported)
    stats = Worker(config, {"sentiment": Engine(task)}, database, hook=manager.hook).run()

    assert (stats.messages, stats.predictions, stats.dead_letters) == (1000, 1000 - bad, bad)
    assert (reported.predictions, reported.dead_letters) == (1000 - bad, bad)
    with database.session() as session:
        ids = session.scalars(select(PredictionRow.record_id)).all()
        reasons = session.scalars(select(DeadLetterRow.reason)).all()
        raw = set(session.scalars(select(DeadLetterRow.raw_value)).all())
        row = session.scalar(select(PredictionRow).where(PredictionRow.record_id == "good-1"))
    assert sorted(ids) == sorted(f"good-{i}" for i in range(1000) if i % 25 != 7)
    assert len(reasons) == bad
    for value, reason in MALFORMED:
        assert sum(reason in r for r in reasons) == bad // len(MALFORMED), reason
        assert value in raw  # the exact bytes are kept for replay
    assert row.input_text == "review 1: a fine film"
    assert (row.task, row.backend, row.model_name) == ("sentiment", "torch", str(sentiment_model_dir))
    assert row.output["label"] == row.label and set(row.output) == {"label", "score", "scores", "truncated"}
    assert row.source_topic == topic and row.message_timestamp is not None
    assert (row.source_key, row.source_key_text) == (b"k1", "k1")
    committed, ends = committed_and_end(bootstrap, group, topic, 3)
    assert committed == ends
    database.dispose()


# --- worker processes -----------------------------------------------------------------------------


def stored(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionRow)))


def distinct_offsets(database: Database) -> set[tuple[int, int]]:
    with database.session() as session:
        return set(session.execute(select(PredictionRow.source_partition, PredictionRow.source_offset)).all())


def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(kafka_broker, tmp_path, sentiment_model_dir):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("kill"), unique("group")
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    database = migrated(url)
    create_topic(bootstrap, topic, partitions=2)
    produce(bootstrap, topic, [good_message(i) for i in range(1000)])

    first = start_worker(topic, group, bootstrap, url, sentiment_model_dir, "--batch-size", "10")
    wait_for(lambda: stored(database) >= 150, 120, "the first rows", [first])
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = stored(database)
    assert killed_at < 1000, "the worker finished before it could be killed: the test proves nothing"

    second = start_worker(topic, group, bootstrap, url, sentiment_model_dir, "--batch-size", "50")
    wait_for(lambda: caught_up(bootstrap, group, topic, 2), 120, "offsets to reach the end", [second])
    stop(second)
    assert stored(database) == 1000
    ends = committed_and_end(bootstrap, group, topic, 2)[1]
    assert distinct_offsets(database) == {(p, o) for p in range(2) for o in range(ends[p])}
    database.dispose()


def test_two_workers_in_one_group_store_every_message_exactly_once(kafka_broker, postgres_url, sentiment_model_dir):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("pair"), unique("group")
    database = migrated(postgres_url)
    create_topic(bootstrap, topic, partitions=4)
    workers = [
        start_worker(topic, group, bootstrap, postgres_url, sentiment_model_dir, "--batch-size", "20") for _ in range(2)
    ]

    # Both members must hold partitions before producing, so the stream starts no rebalance.
    wait_for(lambda: group_settled(bootstrap, group, members=2), 120, "both workers to join the group", workers)
    produce(bootstrap, topic, [good_message(i) for i in range(1000)])
    wait_for(lambda: stored(database) >= 1000, 120, "1000 rows", workers)
    wait_for(lambda: caught_up(bootstrap, group, topic, 4), 60, "offsets to reach the end", workers)
    logs = [stop(worker) for worker in workers]
    assert stored(database) == 1000
    assert len(distinct_offsets(database)) == 1000
    consumed = [int(log.rsplit("consumed ", 1)[1].split()[0]) for log in logs]
    assert all(count > 0 for count in consumed), logs
    assert sum(consumed) == 1000
    database.dispose()


def test_a_rebalance_mid_stream_hands_partitions_over_without_loss(kafka_broker, postgres_url, sentiment_model_dir):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("rebalance"), unique("group")
    database = migrated(postgres_url)
    create_topic(bootstrap, topic, partitions=4)
    produce(bootstrap, topic, [good_message(i) for i in range(3000)])
    first = start_worker(topic, group, bootstrap, postgres_url, sentiment_model_dir, "--batch-size", "10")
    wait_for(lambda: stored(database) >= 200, 120, "the first rows", [first])
    # A second member joins while the first is busy: the first must hand partitions over.
    second = start_worker(topic, group, bootstrap, postgres_url, sentiment_model_dir, "--batch-size", "10")
    wait_for(lambda: group_settled(bootstrap, group, members=2), 120, "the second worker to join", [first, second])
    produce(bootstrap, topic, [good_message(i) for i in range(3000, 4000)])
    wait_for(lambda: caught_up(bootstrap, group, topic, 4), 180, "offsets to reach the end", [first, second])
    logs = [stop(first), stop(second)]
    assert "revoked" in logs[0], logs[0]
    assert stored(database) == 4000
    assert len(distinct_offsets(database)) == 4000
    consumed = [int(log.rsplit("consumed ", 1)[1].split()[0]) for log in logs]
    assert consumed[1] > 0, "the second worker never got a partition"
    database.dispose()


def test_one_worker_serves_every_task_routing_by_the_task_field(kafka_broker, tmp_path):
    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("tasks"), unique("group")
    database = migrated(f"sqlite:///{tmp_path / 'tasks.db'}")
    models = {
        "sentiment": save_tiny_distilbert(tmp_path / "s", labels=["negative", "positive"]),
        "ner": save_tiny_distilbert(tmp_path / "n", head="token-classification", labels=["O", "B-PER", "I-PER"]),
        "qa": save_tiny_distilbert(tmp_path / "q", head="question-answering"),
        "multilabel": save_tiny_distilbert(tmp_path / "m", labels=["joy", "anger"]),
    }
    engines = {task: Engine(load_task(task, str(path))) for task, path in models.items()}
    good = [
        {"id": "s1", "text": "a fine film"},  # no task field: the first task, sentiment
        {"id": "n1", "task": "ner", "text": "anna met peter in oslo " * 20},  # longer than the model maximum
        {"id": "q1", "task": "qa", "question": "who met peter?", "context": "anna met peter in oslo."},
        {"id": "m1", "task": "multilabel", "text": "so happy and so angry"},
    ]
    bad = {
        "q2": ({"id": "q2", "task": "qa", "question": "who?"}, "missing field 'context'"),
        "q3": ({"id": "q3", "task": "qa", "context": "anna met peter."}, "missing field 'question'"),
        "n2": ({"id": "n2", "task": "ner", "text": ""}, "field 'text' is empty"),
        "m2": ({"id": "m2", "task": "multilabel", "text": ["not", "a", "string"]}, "field 'text' must be a string"),
        "x1": ({"id": "x1", "task": "translation", "text": "hallo"}, "task 'translation' is not served"),
        "s2": ({"id": "s2", "text": "long " * 1000}, "over the limit"),
    }
    messages = [(None, json.dumps(row).encode()) for row in good + [row for row, _reason in bad.values()]]
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, messages)
    config = WorkerConfig(topics=[topic], group=group, bootstrap_servers=bootstrap, max_messages=len(messages),
                          max_message_bytes=MAX_BYTES)  # fmt: skip
    stats = Worker(config, engines, database).run()

    assert (stats.predictions, stats.dead_letters) == (len(good), len(bad))
    with database.session() as session:
        rows = {row.record_id: row for row in session.scalars(select(PredictionRow))}
        dead = session.scalars(select(DeadLetterRow)).all()
    assert {row_id: row.task for row_id, row in rows.items()} == {
        "s1": "sentiment", "n1": "ner", "q1": "qa", "m1": "multilabel",
    }  # fmt: skip
    assert set(rows["n1"].output) == {"entities"} and rows["n1"].output["entities"][-1]["end"] > 300
    assert rows["q1"].input_text == "who met peter?" and rows["q1"].input_extra == {
        "context": "anna met peter in oslo."
    }
    assert rows["q1"].label == rows["q1"].output["answers"][0]["text"]
    assert set(rows["m1"].output) == {"labels", "scores", "truncated"}
    for letter in dead:
        reason = bad[json.loads(letter.raw_value)["id"]][1]
        assert reason in letter.reason
    database.dispose()
