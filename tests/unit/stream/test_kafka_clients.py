"""How librdkafka's own log lines reach a person: through the ``nlpkit.kafka`` logger."""

from __future__ import annotations

import logging

import pytest

from nlpkit.stream.kafka_clients import CLIENT_LOG


def test_the_retry_after_a_broker_start_is_dropped_and_other_client_warnings_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=CLIENT_LOG.name):
        CLIENT_LOG.warning(
            "GETPID [nlpkit#producer-1] [thrd:main]: Failed to acquire idempotence PID from broker "
            "127.0.0.1:9092/1: Broker: Coordinator load in progress: retrying"
        )
        CLIENT_LOG.warning("FAIL [nlpkit#consumer-2] [thrd:127.0.0.1:9092/1]: Connection refused")
    assert [record.getMessage() for record in caplog.records] == [
        "FAIL [nlpkit#consumer-2] [thrd:127.0.0.1:9092/1]: Connection refused"
    ]
