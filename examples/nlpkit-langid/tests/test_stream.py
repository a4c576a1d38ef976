"""`nlpkit consume --task langid` against a real Kafka broker (the kafka_broker fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration


def test_a_worker_stores_the_language_of_every_message_and_dead_letters_the_rest(
    kafka_broker, nlpkit_database, langid_model, unseen
):
    bootstrap, topic = kafka_broker.bootstrap_servers, f"texts-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the result: its futures die with it
    admin.create_topics([NewTopic(topic, 2)])[topic].result(timeout=30)
    messages = [(f"text-{n}".encode(), json.dumps({"text": text}).encode()) for n, (_lang, text) in enumerate(unseen)]
    messages.append((b"broken", b'{"text": "unterminated'))
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in messages:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0

    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "nlpkit",
            "--database-url",
            nlpkit_database.url,
            "consume",
            "--topic",
            topic,
            "--task",
            "langid",
            "--model",
            str(langid_model),
            "--bootstrap-servers",
            bootstrap,
            "--max-messages",
            str(len(messages)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NLPKIT_THREADS": "1"},
    )

    assert worker.returncode == 0, worker.stderr
    results = nlpkit_json_lines(nlpkit_database.url, "results", "--topic", topic)
    dead = nlpkit_json_lines(nlpkit_database.url, "dead-letters", "list", "--topic", topic, "--json")
    assert {row["record_id"]: row["label"] for row in results} == {
        f"text-{n}": language for n, (language, _text) in enumerate(unseen)
    }
    assert [(row["key"], row["reason"].split(":")[0]) for row in dead] == [("broken", "invalid JSON")]


def nlpkit_json_lines(database_url: str, *args: str) -> list[dict]:
    """What an nlpkit command prints as JSON lines, read as an operator would."""
    done = subprocess.run(
        [sys.executable, "-m", "nlpkit", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]
