"""Secured Kafka, for real: SASL_SSL logins and ACLs on a real broker, and the settings behind them.

A broker of this module's own listens for SASL_SSL clients with a certificate made here by the
openssl command (signed by a CA made here too, subjectAltName 127.0.0.1), knows three SCRAM-SHA-512
users, and authorizes every request by the ACLs its admin user creates through confluent-kafka's
AdminClient. A worker whose user may read only its topic and group (and write its output and
dead-letter topics) consumes, stores and commits. A wrong password, a CA that did not sign the
broker's certificate, and each missing ACL end ``nlpkit consume`` and ``nlpkit send`` within
seconds with one line naming the cause and nothing committed, where librdkafka alone would retry
for ever; no password appears in any output or log line.

Before the broker: librdkafka checks every property while a client is made, loads the CA
certificate then, and with ``debug=conf`` logs the configuration it ended up with, so the worker's
real consumer and dead-letter producer are made from ``NLPKIT_KAFKA_*`` variables and a real
certificate, and their own account of their settings is read back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import OFFSET_INVALID, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from terminal import error_line
from workers import committed_and_end, migrated

from nlpkit.cli import build_cli
from nlpkit.errors import NlpkitError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.localservices.kafka import BrokerSecurity, KafkaBroker
from nlpkit.store import DeadLetterRow, PredictionRow
from nlpkit.stream.worker import Worker, WorkerConfig
from nlpkit_plugins.sentiment import SentimentTask

pytestmark = pytest.mark.integration

NO_BROKER = "127.0.0.1:1"
USERNAME, PASSWORD = "nlpkit-worker", "pass-through-secret"
CONF_LINE = re.compile(r"^CONF \[[^]]+\] \[[^]]+\]:\s+(\S+) = (.*)$")


def openssl(*arguments: str | Path) -> None:
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A self-signed CA certificate in PEM, made by the openssl command (it signed no broker's)."""
    certificate, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nlpkit test CA",
            "-keyout", key, "-out", certificate)  # fmt: skip
    return certificate


def kafka_environment(monkeypatch: pytest.MonkeyPatch, directory: Path, variables: dict[str, str]) -> None:
    """Exactly these NLPKIT_KAFKA_* variables, set the way an operator would; no nlpkit.toml."""
    monkeypatch.chdir(directory)  # no ./nlpkit.toml of the developer's
    monkeypatch.delenv("NLPKIT_CONFIG", raising=False)
    for variable in [name for name in os.environ if name.startswith("NLPKIT_KAFKA_")]:
        monkeypatch.delenv(variable)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def sasl_ssl(ca_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """SASL_SSL with PLAIN, set the way an operator would: NLPKIT_KAFKA_* variables only."""
    variables = {
        "NLPKIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "NLPKIT_KAFKA_SASL_MECHANISMS": "PLAIN",
        "NLPKIT_KAFKA_SASL_USERNAME": USERNAME,
        "NLPKIT_KAFKA_SASL_PASSWORD": PASSWORD,
        "NLPKIT_KAFKA_SSL_CA_LOCATION": str(ca_file),
    }
    kafka_environment(monkeypatch, tmp_path, variables)
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


# The tiny model has no `nlpkit models tune` record, so `--backend auto` would say in a line of its own that
# it falls back to onnx; these workers name their backend, leaving the refusal the only line.
UNTUNED = ("--backend", "torch")


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
                    "--model", str(sentiment_model_dir), *UNTUNED, "--bootstrap-servers", NO_BROKER)  # fmt: skip
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


# --- a secured broker: SCRAM-SHA-512 over TLS, and ACLs ----------------------------------

ADMIN, ADMIN_PASSWORD = "admin", "admin-secret-of-the-acls"
READER, READER_PASSWORD = "nlpkit-reader", "reader-secret-may-not-write"
WRONG_PASSWORD = "not-the-password-of-anyone"
PASSWORDS = (PASSWORD, ADMIN_PASSWORD, READER_PASSWORD, WRONG_PASSWORD)
TOPIC, OUTPUT, DEAD, PRIVATE = "reviews", "review-results", "review-dead-letters", "private-reviews"
GROUPS = "secure-"  # the consumer groups the worker's users may read: every one named so
REVIEWS = [
    (b"r1", b'{"id": "r1", "text": "a fine film"}'),
    (b"r2", b"plain text: a dull film"),
    (b"r3", b""),  # empty: a dead letter
    (b"r4", b'{"id": "r4", "text": "the best of the year"}'),
]
REFUSED_WITHIN_S = 20  # librdkafka alone retries a refused login for ever, and a refused group join too


def allow(user: str, resource: ResourceType, name: str, operation: AclOperation, prefixed: bool = False) -> AclBinding:
    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    return AclBinding(resource, name, pattern, f"User:{user}", "*", operation, AclPermissionType.ALLOW)


# The worker's user may read its topic and groups and write its output and dead-letter topics; the
# reader may only read. PRIVATE is nobody's.
ACLS = [
    allow(USERNAME, ResourceType.TOPIC, TOPIC, AclOperation.READ),
    allow(USERNAME, ResourceType.GROUP, GROUPS, AclOperation.READ, prefixed=True),
    allow(USERNAME, ResourceType.TOPIC, OUTPUT, AclOperation.WRITE),
    allow(USERNAME, ResourceType.TOPIC, DEAD, AclOperation.WRITE),
    allow(READER, ResourceType.TOPIC, TOPIC, AclOperation.READ),
    allow(READER, ResourceType.GROUP, GROUPS, AclOperation.READ, prefixed=True),
]


@dataclass(frozen=True)
class Certificates:
    """A CA, and the broker's certificate it signed (subjectAltName 127.0.0.1 and localhost) with its key."""

    ca: Path
    broker: Path
    broker_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("pki")
    made = Certificates(directory / "ca.pem", directory / "broker.pem", directory / "broker-key.pem")
    ca_key = directory / "ca-key.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nlpkit secured broker CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", ca_key, "-out", made.ca)  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-CA", made.ca, "-CAkey", ca_key, "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", made.broker_key, "-out", made.broker)  # fmt: skip
    return made


@pytest.fixture(scope="module")
def secured_broker(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The module's broker: its users made when it was formatted, then topics, ACLs and the reviews
    made by its admin user over SASL_SSL, as an operator of a secured cluster would."""
    users = {ADMIN: ADMIN_PASSWORD, USERNAME: PASSWORD, READER: READER_PASSWORD}
    security = BrokerSecurity(certificates.broker, certificates.broker_key, users=users, super_users=(ADMIN,))
    with KafkaBroker(tmp_path_factory.mktemp("secured-kafka"), security=security) as broker:
        set_up_as_admin(broker, certificates.ca)
        yield broker


def set_up_as_admin(broker: KafkaBroker, ca: Path) -> None:
    as_admin = {
        "bootstrap.servers": broker.secure_bootstrap_servers,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": ADMIN,
        "sasl.password": ADMIN_PASSWORD,
        "ssl.ca.location": str(ca),
    }
    admin = AdminClient(as_admin)
    for future in admin.create_topics([NewTopic(name, 1, 1) for name in (TOPIC, OUTPUT, DEAD, PRIVATE)]).values():
        future.result(30)
    for future in admin.create_acls(ACLS).values():
        future.result(30)
    producer = Producer(as_admin)
    for key, value in REVIEWS:
        producer.produce(TOPIC, value, key)
    producer.produce(PRIVATE, b"not for the worker")
    assert producer.flush(30) == 0


@pytest.fixture
def login(
    secured_broker: KafkaBroker, certificates: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., None]:
    """Become a user of the secured broker as an operator configures one: environment variables only."""

    def as_user(user: str = USERNAME, password: str = PASSWORD, ca: Path | None = None) -> None:
        kafka_environment(
            monkeypatch,
            tmp_path,
            {
                "NLPKIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "NLPKIT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "NLPKIT_KAFKA_SASL_USERNAME": user,
                "NLPKIT_KAFKA_SASL_PASSWORD": password,
                "NLPKIT_KAFKA_SSL_CA_LOCATION": str(ca or certificates.ca),
            },
        )
        monkeypatch.setenv("NLPKIT_BOOTSTRAP_SERVERS", secured_broker.secure_bootstrap_servers)

    return as_user


@pytest.fixture
def consume(database, sentiment_model_dir: Path) -> Iterator[Callable[..., tuple[Result, float]]]:
    """``nlpkit consume`` of the reviews into ``database``, run in this process; its result and its
    seconds. The signal handlers a worker installs are undone afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def run(*arguments: str) -> tuple[Result, float]:
        started = time.monotonic()
        result = CliRunner().invoke(
            build_cli(),
            ["--database-url", database.url, "consume", "--task", "sentiment", "--model", str(sentiment_model_dir),
             "--max-messages", str(len(REVIEWS)), *arguments],
        )  # fmt: skip
        return result, time.monotonic() - started

    yield run
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def new_group() -> str:
    """A consumer group the worker's users may read, used by no other test."""
    return f"{GROUPS}{uuid.uuid4().hex[:8]}"


def end_offset(broker: KafkaBroker, topic: str) -> int:
    return committed_and_end(broker.bootstrap_servers, "nobody", topic, 1)[1][0]


def without_passwords(*texts: str) -> bool:
    return not any(password in text for password in PASSWORDS for text in texts)


def test_a_worker_allowed_only_its_topic_and_group_consumes_stores_and_commits(
    login, consume, database, secured_broker, caplog
):
    login()
    group = f"{GROUPS}allowed"
    result, _seconds = consume(
        "--topic", TOPIC, "--group", group, "--output-topic", OUTPUT, "--dead-letter-topic", DEAD
    )
    assert result.exit_code == 0, result.output
    assert (database.count(PredictionRow), database.count(DeadLetterRow)) == (len(REVIEWS) - 1, 1)
    # The plain listener's anonymous user (a super user) looks on.
    assert committed_and_end(secured_broker.bootstrap_servers, group, TOPIC, 1) == ([len(REVIEWS)], [len(REVIEWS)])
    assert (end_offset(secured_broker, OUTPUT), end_offset(secured_broker, DEAD)) == (len(REVIEWS) - 1, 1)
    assert without_passwords(result.output, caplog.text)


@dataclass(frozen=True)
class Refusal:
    """One way to be refused: who logs in, against what CA, what they ask for, the line that says so."""

    cause: str
    user: str = USERNAME
    password: str = PASSWORD
    untrusted_ca: bool = False
    topic: str = TOPIC
    group: str | None = None  # None: a group of the worker's, new to this case
    arguments: tuple[str, ...] = ()


CREDENTIALS_REFUSED = (
    f"Kafka refused the credentials of user '{USERNAME}' (SASL SCRAM-SHA-512 authentication failed); "
    "check sasl.username and sasl.password"
)
CERTIFICATE_REFUSED = "the broker's certificate is not trusted by ssl.ca.location {ca} (SSL handshake failed)"
NO_WRITE = "user '{user}' may not write to topic '{topic}' (missing ACL)"
WORKER_REFUSALS = {
    "wrong-password": Refusal(CREDENTIALS_REFUSED, password=WRONG_PASSWORD),
    "untrusted-certificate": Refusal(CERTIFICATE_REFUSED, untrusted_ca=True),
    "no-acl-for-the-topic": Refusal(f"user '{USERNAME}' may not read topic '{PRIVATE}' (missing ACL)", topic=PRIVATE),
    "no-acl-for-the-group": Refusal(
        f"user '{USERNAME}' may not use consumer group 'elsewhere' (missing ACL: READ on the group)", group="elsewhere"
    ),
    "no-acl-for-the-output-topic": Refusal(
        NO_WRITE.format(user=USERNAME, topic=PRIVATE), arguments=("--output-topic", PRIVATE)
    ),
    "no-acl-for-the-dead-letter-topic": Refusal(
        NO_WRITE.format(user=USERNAME, topic=PRIVATE), arguments=("--dead-letter-topic", PRIVATE)
    ),
    # A user who may write no topic at all: its idempotent producer is refused a producer id.
    "no-acl-to-write-anything": Refusal(
        NO_WRITE.format(user=READER, topic=OUTPUT), READER, READER_PASSWORD, arguments=("--output-topic", OUTPUT)
    ),
}


@pytest.mark.parametrize("refusal", WORKER_REFUSALS.values(), ids=WORKER_REFUSALS.keys())
def test_a_refused_worker_stops_at_once_with_one_line_naming_the_cause_and_commits_nothing(
    refusal, login, consume, ca_file, secured_broker, caplog
):
    login(refusal.user, refusal.password, ca_file if refusal.untrusted_ca else None)
    group = refusal.group or new_group()
    result, seconds = consume("--topic", refusal.topic, "--group", group, *refusal.arguments)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (result.exit_code, lines) == (1, [f"Error: {refusal.cause.format(ca=ca_file)}"]), result.output
    assert seconds < REFUSED_WITHIN_S
    assert committed_and_end(secured_broker.bootstrap_servers, group, refusal.topic, 1)[0] == [OFFSET_INVALID]
    # What a worker would log besides: no retry storm, at most librdkafka's own line for a fatal error.
    assert len([record for record in caplog.records if record.name == "nlpkit.kafka"]) <= 1, caplog.text
    assert without_passwords(result.output, caplog.text)


def test_a_worker_without_a_database_refused_its_transactional_id_stops_with_one_line(login, consume):
    login()
    group = new_group()
    arguments = ("--no-store", "--output-topic", OUTPUT, "--dead-letter-topic", DEAD)
    result, seconds = consume("--topic", TOPIC, "--group", group, *arguments)
    transactional_id = rf"nlpkit-{group}-[0-9a-f]{{12}}"  # new for each worker process
    refused = rf"user '{USERNAME}' may not use transactional id '{transactional_id}' \(missing ACL: WRITE on it\)"
    assert (result.exit_code, re.fullmatch(f"Error: {refused}", result.stderr.strip()) is not None) == (1, True), (
        result.output
    )
    assert seconds < REFUSED_WITHIN_S


def test_a_worker_process_refused_its_group_prints_that_line_alone(login, database, sentiment_model_dir):
    """As a real process, once connected (where librdkafka's own lines are no longer held back)."""
    login()
    result = nlpkit("--database-url", database.url, "consume", "--topic", TOPIC, "--group", "elsewhere",
                    "--task", "sentiment", "--model", str(sentiment_model_dir), *UNTUNED)  # fmt: skip
    assert error_line(result) == f"Error: {WORKER_REFUSALS['no-acl-for-the-group'].cause}"
    assert without_passwords(result.stdout, result.stderr)


SEND_REFUSALS = {
    "wrong-password": Refusal(CREDENTIALS_REFUSED, password=WRONG_PASSWORD),
    "untrusted-certificate": Refusal(CERTIFICATE_REFUSED, untrusted_ca=True),
    "no-acl-to-write-the-topic": Refusal(NO_WRITE.format(user=USERNAME, topic=TOPIC)),
    "no-acl-to-write-anything": Refusal(NO_WRITE.format(user=READER, topic=TOPIC), READER, READER_PASSWORD),
}


@pytest.mark.parametrize("refusal", SEND_REFUSALS.values(), ids=SEND_REFUSALS.keys())
def test_a_refused_send_stops_at_once_with_one_line_naming_the_cause(refusal, login, ca_file, tmp_path, secured_broker):
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text('{"id": "s1", "text": "sent by the worker, who may only read"}\n')
    login(refusal.user, refusal.password, ca_file if refusal.untrusted_ca else None)
    started = time.monotonic()
    result = nlpkit("send", "--topic", refusal.topic, str(reviews))
    assert error_line(result) == f"Error: {refusal.cause.format(ca=ca_file)}"
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert end_offset(secured_broker, TOPIC) == len(REVIEWS)
    assert without_passwords(result.stdout, result.stderr)


def test_the_broker_logged_no_password_and_keeps_its_key_to_itself(secured_broker):
    assert without_passwords(secured_broker.log_file.read_text())
    assert (secured_broker.data_dir / "server.properties").stat().st_mode & 0o077 == 0
