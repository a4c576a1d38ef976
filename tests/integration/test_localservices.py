"""The local services are real: Kafka topics, consumer groups and restarts; PostgreSQL databases."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from nlpkit.localservices import kafka
from nlpkit.localservices.kafka import KafkaBroker
from nlpkit.localservices.postgres import PostgresServer

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _create_topic(broker: KafkaBroker, partitions: int) -> str:
    topic = _unique("topic")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    return topic


def _produce(broker: KafkaBroker, topic: str, values: list[str], partitions: int = 1) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for index, value in enumerate(values):
        producer.produce(topic, value.encode(), partition=index % partitions)
    assert producer.flush(30) == 0


def _group_consumer(broker: KafkaBroker, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def _consume(consumer: Consumer, count: int, timeout: float = 30) -> list[Message]:
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None:
            assert message.error() is None, message.error()
            messages.append(message)
    assert len(messages) == count, f"got {len(messages)} of {count} messages"
    return messages


def test_broker_serves_metadata_at_its_address(kafka_broker: KafkaBroker) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers}).list_topics(timeout=10)
    assert kafka_broker.is_running()
    assert [f"{b.host}:{b.port}" for b in metadata.brokers.values()] == [kafka_broker.bootstrap_servers]


def test_attach_finds_the_running_broker(kafka_broker: KafkaBroker) -> None:
    attached = KafkaBroker.attach(kafka_broker.data_dir)
    assert (attached.bootstrap_servers, attached.pid) == (kafka_broker.bootstrap_servers, kafka_broker.pid)
    assert attached.is_running()


def test_topic_with_four_partitions(kafka_broker: KafkaBroker) -> None:
    topic = _create_topic(kafka_broker, partitions=4)
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers}).list_topics(topic, timeout=10)
    assert sorted(metadata.topics[topic].partitions) == [0, 1, 2, 3]


def test_consumer_group_reads_all_partitions_and_commits(kafka_broker: KafkaBroker) -> None:
    topic, group = _create_topic(kafka_broker, partitions=4), _unique("group")
    _produce(kafka_broker, topic, [f"m{i}" for i in range(20)], partitions=4)
    consumer = _group_consumer(kafka_broker, group, topic)
    try:
        messages = _consume(consumer, 20)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert sorted(message.value().decode() for message in messages) == sorted(f"m{i}" for i in range(20))
    checker = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": group})
    try:
        committed = checker.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    finally:
        checker.close()
    assert [tp.offset for tp in committed] == [5, 5, 5, 5]


def test_restart_keeps_address_data_and_committed_offsets(kafka_broker: KafkaBroker) -> None:
    topic, group = _create_topic(kafka_broker, partitions=1), _unique("group")
    _produce(kafka_broker, topic, [f"m{i}" for i in range(5)])
    consumer = _group_consumer(kafka_broker, group, topic)
    try:
        consumer.commit(message=_consume(consumer, 3)[-1], asynchronous=False)
    finally:
        consumer.close()
    address = kafka_broker.bootstrap_servers

    kafka_broker.stop()
    assert not kafka_broker.is_running()
    kafka_broker.start()

    assert kafka_broker.bootstrap_servers == address
    resumed = _group_consumer(kafka_broker, group, topic)
    try:
        assert [m.value() for m in _consume(resumed, 2)] == [b"m3", b"m4"]
    finally:
        resumed.close()


def test_postgres_accepts_sqlalchemy_connections(postgres_server: PostgresServer) -> None:
    engine = sa.create_engine(postgres_server.url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.text("SELECT current_user, current_database()")).one()
            version = connection.execute(sa.text("SHOW server_version_num")).scalar_one()
    finally:
        engine.dispose()
    assert tuple(row) == ("nlpkit", "nlpkit")
    assert int(version) >= 130000


def test_postgres_refuses_a_wrong_password(postgres_server: PostgresServer) -> None:
    engine = sa.create_engine(postgres_server.url.replace(":nlpkit@", ":wrong@"))
    try:
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            engine.connect()
    finally:
        engine.dispose()


def test_fresh_databases_are_empty_usable_and_separate(postgres_server: PostgresServer, postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE notes (id serial PRIMARY KEY, body text)"))
            connection.execute(sa.text("INSERT INTO notes (body) VALUES ('hello')"))
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT body FROM notes")).scalar_one() == "hello"
    finally:
        engine.dispose()

    other_name = f"other_{uuid.uuid4().hex[:8]}"
    other = sa.create_engine(postgres_server.create_database(other_name))
    try:
        assert sa.inspect(other).get_table_names() == []
    finally:
        other.dispose()
        postgres_server.drop_database(other_name)


def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path, monkeypatch) -> None:
    """One random cluster id in 64 begins with "-"; passed as a separate word, kafka-storage's
    argument parser took it for an option and the broker never started (seen in a test run)."""
    from nlpkit.localservices import kafka

    monkeypatch.setattr(kafka, "_cluster_id", lambda: "-" + "A" * 21)
    broker = KafkaBroker(tmp_path / "dash")
    broker.data_dir.mkdir(parents=True)
    broker._write_properties()
    broker._format(kafka.ensure_kafka_jars())
    assert "cluster.id=-AAAAAAAAAAAAAAAAAAAAA" in (tmp_path / "dash" / "kraft-logs" / "meta.properties").read_text()


def test_a_stopped_broker_leaves_a_class_archive_that_the_next_one_maps(tmp_path, monkeypatch) -> None:
    """The first broker on a JDK writes the classes it loaded as it stops; later ones map that archive
    (about a second off every start) instead of reading the jars again."""
    archive = tmp_path / "classes.jsa"
    monkeypatch.setattr(kafka, "class_archive", lambda: archive)
    first = KafkaBroker(tmp_path / "first").start()
    try:
        command = Path(f"/proc/{first.status().pid}/cmdline").read_bytes().split(b"\0")
        assert f"-XX:ArchiveClassesAtExit={first.data_dir / 'classes.jsa.draft'}".encode() in command
    finally:
        first.stop()
    assert archive.is_file()
    assert not (first.data_dir / "classes.jsa.draft").exists()
    second = KafkaBroker(tmp_path / "second").start()
    try:
        assert str(archive) in Path(f"/proc/{second.status().pid}/maps").read_text()  # mapped, not only named
        _create_topic(second, partitions=1)  # and a broker that works
    finally:
        second.stop()
    assert not (second.data_dir / "classes.jsa.draft").exists()
