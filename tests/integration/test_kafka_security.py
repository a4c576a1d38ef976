"""SASL/SSL settings reach librdkafka itself, not only nlpkit's dictionaries.

librdkafka checks every property while a client is made, loads the CA certificate then,
and with ``debug=conf`` logs the configuration it ended up with. So the worker's real
consumer and dead-letter producer are made here from ``NLPKIT_KAFKA_*`` variables and a
real certificate, and their own account of their settings is read back. Nothing here
connects to a broker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from terminal import error_line
from workers import migrated

from nlpkit.errors import NlpkitError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.stream.worker import Worker, WorkerConfig
from nlpkit_plugins.sentiment import SentimentTask

NO_BROKER = "127.0.0.1:1"
USERNAME, PASSWORD = "nlpkit-worker", "pass-through-secret"
CONF_LINE = re.compile(r"^CONF \[[^]]+\] \[[^]]+\]:\s+(\S+) = (.*)$")


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A self-signed CA certificate in PEM, made by the openssl command."""
    certificate, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nlpkit test CA",
         "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    return certificate


@pytest.fixture
def sasl_ssl(ca_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """SASL_SSL with PLAIN, set the way an operator would: NLPKIT_KAFKA_* variables only."""
    monkeypatch.chdir(tmp_path)  # no ./nlpkit.toml of the developer's
    monkeypatch.delenv("NLPKIT_CONFIG", raising=False)
    for variable in [name for name in os.environ if name.startswith("NLPKIT_KAFKA_")]:
        monkeypatch.delenv(variable)
    variables = {
        "NLPKIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "NLPKIT_KAFKA_SASL_MECHANISMS": "PLAIN",
        "NLPKIT_KAFKA_SASL_USERNAME": USERNAME,
        "NLPKIT_KAFKA_SASL_PASSWORD": PASSWORD,
        "NLPKIT_KAFKA_SSL_CA_LOCATION": str(ca_file),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


@pytest.fixture
def worker(sentiment_model_dir: Path, database) -> Worker:
    task = SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))
    config = WorkerConfig(topics=["reviews"], group="secure", bootstrap_servers=NO_BROKER, dead_letter_topic="dead")
    return Worker(config, {"sentiment": Engine(task)}, database)


def reported_settings(poll: Callable[[float], object], caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """The configuration a client logged at creation (``debug=conf``); a poll hands the log lines over."""
    caplog.clear()
    poll(0)
    lines = [record.getMessage() for record in caplog.records if record.name == "nlpkit.kafka"]
    return dict(match.groups() for line in lines if (match := CONF_LINE.match(line)))


def test_the_workers_clients_use_sasl_ssl_settings_from_the_environment(worker, sasl_ssl, ca_file, caplog, monkeypatch):
    monkeypatch.setenv("NLPKIT_KAFKA_DEBUG", "conf")  # librdkafka logs what it was configured with
    caplog.set_level(logging.DEBUG, logger="nlpkit.kafka")
    expected = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "[redacted]",  # librdkafka's own masking: set, not shown
        "sasl.password": "[redacted]",
        "ssl.ca.location": str(ca_file),
    }
    consumer = worker.new_consumer()
    try:
        consumer_settings = reported_settings(consumer.poll, caplog)
    finally:
        consumer.close()
    assert {key: consumer_settings.get(key) for key in expected} == expected
    assert consumer_settings["group.id"] == "secure"

    producer = worker.dead_letter_topic.new_producer()
    producer_settings = reported_settings(producer.poll, caplog)
    assert {key: producer_settings.get(key) for key in expected} == expected
    assert producer_settings["enable.idempotence"] == "true"
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "refusal"),
    [
        ("NLPKIT_KAFKA_SECURITY_PROTOCOL", "BOGUS", 'Invalid value "BOGUS" for configuration property'),
        ("NLPKIT_KAFKA_SASL_MECHANISMS", "NOPE", "Unsupported SASL mechanism: NOPE"),
        ("NLPKIT_KAFKA_SSL_CA_LOCATION", "{not_a_certificate}", "ssl.ca.location failed"),
        ("NLPKIT_KAFKA_SASL_PASSWORDD", "typo", 'No such configuration property: "sasl.passwordd"'),
    ],
    ids=["protocol", "mechanism", "ca-file", "misspelt-name"],
)
def test_a_setting_librdkafka_refuses_is_one_nlpkit_error(
    worker, sasl_ssl, tmp_path, monkeypatch, variable, value, refusal
):
    not_a_certificate = tmp_path / "not-a-certificate.pem"
    not_a_certificate.write_text("this is no certificate\n")
    monkeypatch.setenv(variable, value.format(not_a_certificate=not_a_certificate))
    for make in (worker.new_consumer, worker.dead_letter_topic.new_producer):
        with pytest.raises(NlpkitError) as refused:
            make()
        message = str(refused.value)
        assert message.startswith("Kafka client settings refused: ") and refusal in message
        assert "\n" not in message and PASSWORD not in message


def nlpkit(*arguments: str) -> subprocess.CompletedProcess:
    """A real ``nlpkit`` process with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "nlpkit", *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "NLPKIT_THREADS": "1"},
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def test_consume_says_in_one_line_which_setting_librdkafka_refused(
    sasl_ssl, sentiment_model_dir, tmp_path, monkeypatch
):
    url = f"sqlite:///{tmp_path / 'nlpkit.db'}"
    migrated(url).dispose()
    monkeypatch.setenv("NLPKIT_KAFKA_SECURITY_PROTOCOL", "BOGUS")
    result = nlpkit("--database-url", url, "consume", "--topic", "reviews", "--task", "sentiment",
                    "--model", str(sentiment_model_dir), "--bootstrap-servers", NO_BROKER)  # fmt: skip
    line = error_line(result)
    assert 'Invalid value "BOGUS" for configuration property "security.protocol"' in line
    assert PASSWORD not in result.stdout + result.stderr


def test_config_shows_the_username_and_masks_the_password(sasl_ssl, ca_file):
    result = nlpkit("config", "--json")
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    rows = {row["name"]: (row["value"], row["source"]) for row in json.loads(result.stdout)}
    assert rows["kafka: sasl.password"] == ("***", "NLPKIT_KAFKA_SASL_PASSWORD")
    assert rows["kafka: sasl.username"] == (USERNAME, "NLPKIT_KAFKA_SASL_USERNAME")
    assert rows["kafka: security.protocol"] == ("SASL_SSL", "NLPKIT_KAFKA_SECURITY_PROTOCOL")
    assert rows["kafka: ssl.ca.location"] == (str(ca_file), "NLPKIT_KAFKA_SSL_CA_LOCATION")
