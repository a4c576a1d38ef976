"""`nlpkit consume --task langid` against a real Kafka broker (the kafka_broker fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from nlpkit.store import DeadLetterRow, PredictionRow
from nlpkit.stream.kafka_clients import create_topic, produce
from sqlalchemy import select

pytestmark = pytest.mark.integration


def test_a_worker_stores_the_language_of_every_message_and_dead_letters_the_rest(
    kafka_broker, nlpkit_database, langid_model, unseen
):
    bootstrap, topic = kafka_broker.bootstrap_servers, f"texts-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, topic, partitions=2)
    messages = [(f"text-{n}".encode(), json.dumps({"text": text}).encode()) for n, (_lang, text) in enumerate(unseen)]
    messages.append((b"broken", b'{"text": "unterminated'))
    produce(bootstrap, topic, messages)

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
    with nlpkit_database.session() as session:
        stored = dict(session.execute(select(PredictionRow.record_id, PredictionRow.label)).all())
        dead = session.execute(select(DeadLetterRow.source_key, DeadLetterRow.reason)).all()
    assert stored == {f"text-{n}": language for n, (language, _text) in enumerate(unseen)}
    assert [(key, reason.split(":")[0]) for key, reason in dead] == [(b"broken", "invalid JSON")]
