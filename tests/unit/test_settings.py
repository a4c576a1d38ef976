"""Settings: precedence (flag > environment > nlpkit.toml > default), sources shown by
``nlpkit config``, secrets masked, Kafka properties passed through to every client."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nlpkit import settings
from nlpkit.cli import build_cli
from nlpkit.stream.kafka_clients import client_config

TOML = """
database_url = "postgresql+psycopg://nlpkit:file-secret@db.internal/nlpkit"
bootstrap_servers = "kafka-1:9093"

[kafka]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "nlpkit"
"sasl.password" = "toml-kafka-secret"
"""

SECRETS = ("file-secret", "toml-kafka-secret", "env-kafka-secret")


@pytest.fixture
def configured(tmp_path, monkeypatch):
    path = tmp_path / "nlpkit.toml"
    path.write_text(TOML)
    for name in ("NLPKIT_DATABASE_URL", "NLPKIT_BOOTSTRAP_SERVERS", "NLPKIT_METRICS_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NLPKIT_CONFIG", str(path))
    monkeypatch.setenv("NLPKIT_HOME", str(tmp_path / "home"))
    return path


def config_rows(*args: str) -> dict[str, dict[str, str]]:
    result = CliRunner().invoke(build_cli(), [*args, "config", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not any(secret in result.stdout for secret in SECRETS)
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_each_value_comes_from_the_strongest_source_and_says_which(configured, monkeypatch):
    rows = config_rows()
    assert rows["bootstrap_servers"] == {
        "name": "bootstrap_servers",
        "value": "kafka-1:9093",
        "source": str(configured),
    }
    assert rows["metrics_host"]["source"] == "default" and rows["metrics_host"]["value"] == "127.0.0.1"
    assert rows["database_url"]["value"] == "postgresql+psycopg://nlpkit:***@db.internal/nlpkit"

    monkeypatch.setenv("NLPKIT_BOOTSTRAP_SERVERS", "env-broker:9092")
    assert config_rows()["bootstrap_servers"]["source"] == "NLPKIT_BOOTSTRAP_SERVERS"
    flagged = config_rows("--database-url", "sqlite:///flag.db")["database_url"]
    assert (flagged["value"], flagged["source"]) == ("sqlite:///flag.db", "flag")


def test_kafka_secrets_are_masked_and_passed_through_to_clients(configured, monkeypatch):
    monkeypatch.setenv("NLPKIT_KAFKA_SASL_PASSWORD", "env-kafka-secret")
    rows = config_rows()
    assert rows["kafka: sasl.password"] == {
        "name": "kafka: sasl.password",
        "value": settings.MASK,
        "source": "NLPKIT_KAFKA_SASL_PASSWORD",
    }
    assert rows["kafka: security.protocol"]["value"] == "SASL_SSL"
    client = client_config("broker:9093", **{"group.id": "g"})
    assert client["sasl.password"] == "env-kafka-secret"  # the environment beats the file
    assert (client["security.protocol"], client["sasl.mechanism"], client["sasl.username"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "nlpkit",
    )
    assert client["bootstrap.servers"] == "broker:9093" and client["group.id"] == "g"


def test_the_table_form_masks_too(configured):
    result = CliRunner().invoke(build_cli(), ["config"], catch_exceptions=False)
    assert result.exit_code == 0 and "***" in result.stdout
    assert not any(secret in result.stdout for secret in SECRETS)
