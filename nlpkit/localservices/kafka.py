"""A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) on 127.0.0.1.

The jars come from Maven Central once per machine (``mvn dependency:copy-dependencies`` on
``kafka-pom.xml``), so tests and the demo talk to the same broker code as production and no
Docker is needed.

Measured on a 2-core, 24 GB Linux VM with OpenJDK 17.0.15, Kafka 4.3.1 and confluent-kafka
2.16.1 (librdkafka 2.16.0):

* jars: 46 files, 45 MB (43 MiB). First fetch with an empty ``~/.m2`` (Maven's own plugins
  included): 25-35 s; with ``~/.m2`` already holding them: 8 s (Maven start-up and copying);
  afterwards a marker-file check of well under 1 ms.
* ``StorageTool format``: 1.5-2.0 s (one JVM start).
* fresh data dir, launch to Metadata answered: 4.4-5.5 s; to ready, i.e. also the first group
  join and offset commit, which creates ``__consumer_offsets`` (3.5 s of it): 7.8-9.1 s, so
  ``start()`` takes 9.7-11 s with the format. Restart on existing data: 3.6-6.8 s after
  ``stop()``, about 7 s after SIGKILL. Later group joins take about 0.9 s.
* ``stop()`` (SIGTERM, controlled shutdown): 0.4-0.8 s.
* class data sharing (AMD EPYC Zen 3, AVX2, 2 cores): the first broker a JDK runs writes the
  classes it loaded to an archive when it stops (53 MB; that stop takes 3.3-3.7 s, once); later
  JVMs map it instead of reading the jars again. ``start()`` on existing data, alternating in one
  run: 2.5-3.9 s without, 1.6-1.7 s with; the developer's broker to ready (``start_local_broker``,
  four rounds): 3.7-6.5 s without, 2.3-2.5 s with.
* broker RSS once ready: about 175 MiB. The flags matter on 2 cores: without
  ``-XX:TieredStopAtLevel=1`` start-up took 4.5 s longer and RSS was 200 MiB; with G1 and C2
  as well, 240 MiB.

Given a :class:`BrokerSecurity`, the broker also listens for SASL_SSL clients (SCRAM-SHA-512
logins, a certificate the caller made) and authorizes every request by ACLs, as a secured
production cluster does; the PLAINTEXT listener stays as it is.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from nlpkit.localservices import (
    ServiceStatus,
    free_ports,
    log_tail,
    port_is_free,
    process_alive,
    read_state,
    service_status,
    start_local_service,
    stop_service,
    wait_for_exit,
    write_state,
)
from nlpkit.localservices.errors import ServiceError
from nlpkit.system.cache import cache_dir

KAFKA_VERSION = "4.3.1"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_STATE_FILE = "state.json"
_HERE = Path(__file__).parent
_POM = _HERE / "kafka-pom.xml"
_LOG4J_CONFIG = _HERE / "log4j2.properties"

# Startup-oriented JVM flags for small machines: a small heap, SerialGC and the C1 compiler
# only (faster start, lower RSS; a local broker is I/O-bound, not JIT-bound).
_JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

# Single-node settings: replication factors of 1 everywhere (the default of 3 leaves the
# group coordinator unavailable forever), one offsets partition and no initial rebalance
# delay so the first group join is quick, few threads, and a 2 MB cleaner buffer instead of
# 128 MB so the small heap suffices. After a crash (SIGKILL) the restarted node is refused
# with DUPLICATE_BROKER_REGISTRATION until its old session expires: a 3 s session (with
# 0.5 s heartbeats) instead of 9 s cut the restart after SIGKILL from 14.8 s to about 7 s.
_SERVER_SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "inter.broker.listener.name": "PLAINTEXT",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    "group.initial.rebalance.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.dedupe.buffer.size": "2097152",
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
}


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL listener beside the PLAINTEXT one, with SCRAM-SHA-512 users and ACLs.

    ``certificate`` is the broker's certificate in PEM (its chain after it) and ``key`` its
    unencrypted PKCS#8 private key (what ``openssl req -nodes`` writes); clients verify the
    certificate against the CA that signed it, so its subjectAltName must hold 127.0.0.1.
    ``users`` (name -> password; neither holding ``,``, ``=`` or ``]``) are added to the
    storage when it is formatted, so they exist from the first start.

    Every request is authorized (StandardAuthorizer): without an ACL nothing is allowed,
    except to ``super_users`` and to ANONYMOUS, the principal of the PLAINTEXT and controller
    listeners, so the controller, the readiness probe and a caller's setup work as on a plain
    broker while SASL_SSL clients get exactly what their ACLs grant.
    """

    certificate: Path
    key: Path
    users: dict[str, str] = field(default_factory=dict)
    super_users: tuple[str, ...] = ()

    def server_settings(self) -> dict[str, str]:
        """server.properties entries beyond the PLAINTEXT broker's (listeners are the caller's)."""
        principals = ["User:ANONYMOUS", *(f"User:{name}" for name in self.super_users)]
        return {
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": _properties_text(self.certificate.read_text()),
            "ssl.keystore.key": _properties_text(self.key.read_text()),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": ";".join(principals),
        }

    def format_arguments(self) -> list[str]:
        """StorageTool arguments that create the users."""
        return [
            argument
            for name, password in self.users.items()
            for argument in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]


def _properties_text(text: str) -> str:
    """Multi-line text (PEM) as one server.properties value: Java's Properties reads ``\\n`` as a newline."""
    return text.strip().replace("\n", "\\n")


_PROBE_TOPIC = "__nlpkit_readiness"
# Readiness polling expects refused connections at first: librdkafka would print each one,
# and its reconnect backoff (growing to 10 s by default) would delay noticing the broker.
_PROBE_CLIENT = {"log_level": 0, "reconnect.backoff.max.ms": 250}


def ensure_kafka_jars() -> Path:
    """Fetch the broker's jars into the cache once; return the ``libs`` directory.

    A marker file is written only after Maven succeeded, so an interrupted download is
    redone from scratch; a file lock keeps parallel test workers from fetching together.
    """
    home = _kafka_home()
    libs, marker = home / "libs", home / "complete"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if not marker.exists():
            _require_tools("java", "mvn")
            shutil.rmtree(libs, ignore_errors=True)
            _run_maven(libs)
            marker.write_text(f"{KAFKA_VERSION}\n")
    return libs


def _kafka_home() -> Path:
    """This Kafka version's cached files: its jars, and the class archive its brokers share."""
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _require_tools(*names: str) -> None:
    missing = [name for name in names if not shutil.which(name)]
    if missing:
        raise ServiceError(
            f"{' and '.join(missing)} not found on PATH; the local Kafka broker needs Java 17+ and "
            "Maven (on Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven)"
        )


def _run_maven(libs: Path) -> None:
    command = [
        "mvn",
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(_POM),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
        f"-Dkafka.version={KAFKA_VERSION}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=libs.parent)
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise ServiceError(
            f"mvn could not fetch the Kafka {KAFKA_VERSION} jars (exit {result.returncode}): "
            + _maven_error_tail(result.stdout + result.stderr)
        )


def _maven_error_tail(output: str, lines: int = 5) -> str:
    """Maven's last meaningful lines on one line: colour codes and its generic help text dropped."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output).split("To see the full stack trace")[0]
    meaningful = [line.strip() for line in text.splitlines() if line.strip() not in ("", "[ERROR]")]
    return " | ".join(meaningful[-lines:]) or "(no output)"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    _require_tools("java")
    return "java"


def class_archive() -> Path:
    """Where the brokers' class archive (AppCDS) for this JDK and these jars lives.

    Named by the java launcher's real path and mtime, so a JDK upgrade writes a new one rather
    than keep offering one its JVM would refuse (a JVM checks an archive before it maps it and
    runs without sharing when it does not fit; the broker starts either way).
    """
    java = Path(shutil.which(_java()) or _java()).resolve()
    stamp = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    return _kafka_home() / f"classes-{stamp}.jsa"


def _cluster_id() -> str:
    """Kafka's cluster id format: a random UUID as 22 characters of unpadded base64url."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker:
    """One broker+controller JVM whose files all live in ``data_dir``.

    Ports are fixed when the object is made, so ``stop()`` then ``start()`` brings the same
    broker back at the same address with its data, as a restart mid-stream would. With
    ``security`` it also serves SASL_SSL clients at ``secure_bootstrap_servers``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.security = security
        if port is None or controller_port is None or security is not None:
            spare = [free for free in free_ports(4) if free not in (port, controller_port)]
            port, controller_port = port or spare.pop(), controller_port or spare.pop()
        self.port = port
        self.controller_port = controller_port
        self.secure_port = spare.pop() if security is not None else None
        self._process: subprocess.Popen | None = None
        self._pid: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap_servers(self) -> str:
        """The SASL_SSL listener's address (a broker made with ``security`` only)."""
        if self.secure_port is None:
            raise ServiceError("this broker was started without security, so it has no SASL_SSL listener")
        return f"127.0.0.1:{self.secure_port}"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def _properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def _state_file(self) -> Path:
        return self.data_dir / _STATE_FILE

    @classmethod
    def attach(cls, data_dir: Path) -> KafkaBroker:
        """The broker another process started in ``data_dir``, so this one can use or stop it."""
        data_dir = Path(data_dir).resolve()
        state = read_state(data_dir / _STATE_FILE)
        if state is None:
            raise ServiceError(f"no Kafka broker state in {data_dir}")
        broker = cls(data_dir, state["port"], state["controller_port"])
        broker._pid = state["pid"]
        if not broker.is_running():
            raise ServiceError(f"the Kafka broker recorded in {data_dir} (pid {state['pid']}) is not running")
        return broker

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self._pid is not None and process_alive(self._pid, str(self._properties_file))

    def start(self, timeout: float = 90) -> KafkaBroker:
        """Format (first time only), launch, and return once a consumer group can commit."""
        if self.is_running():
            return self
        for port in (self.port, self.controller_port, self.secure_port):
            if port is not None and not port_is_free(port):
                raise ServiceError(f"port {port} on 127.0.0.1 is taken; stop what uses it or pick another port")
        libs = ensure_kafka_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        if not (self._log_dirs / "meta.properties").exists():
            self._format(libs)
        self._launch(libs)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self._kill()
            raise
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        """Block until metadata is served and a group join + commit works; the log tail on failure."""
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, **_PROBE_CLIENT})
        while not self._answers(admin, deadline):
            if not self.is_running():
                raise ServiceError(
                    f"the Kafka broker exited during startup; see {self.log_file}", log_tail(self.log_file)
                )
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"the Kafka broker was not ready within {timeout:.0f} s; see {self.log_file}",
                    log_tail(self.log_file),
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM for a controlled shutdown; SIGKILL if it has not exited after ``timeout`` s."""
        if self.is_running():
            os.kill(self._pid, signal.SIGTERM)
            if self._wait_exit(timeout):
                self._keep_class_archive()
            else:
                self._kill()
        self._reap()
        (self.data_dir / "broker.pid").unlink(missing_ok=True)

    def status(self) -> ServiceStatus:
        running = self.is_running()
        return ServiceStatus(running, self.data_dir, self.bootstrap_servers, self._pid if running else None)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_properties(self) -> None:
        settings = {
            **_SERVER_SETTINGS,
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
            "log.dirs": str(self._log_dirs),
        }
        if self.security is not None:
            settings.update(self.security.server_settings())
            settings["listeners"] += f",SASL_SSL://{self.secure_bootstrap_servers}"
            settings["advertised.listeners"] += f",SASL_SSL://{self.secure_bootstrap_servers}"
        self._properties_file.touch(mode=0o600)  # it may hold the broker's private key
        self._properties_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    @property
    def _archive_draft(self) -> Path:
        """The class archive this broker's JVM writes as it exits, when none existed at its start."""
        return self.data_dir / "classes.jsa.draft"

    def _class_sharing(self, *, draft: bool) -> tuple[str, ...]:
        """JVM options that map the class archive, or (``draft``) write one at exit where there is none."""
        archive = class_archive()
        if archive.is_file():
            return (f"-XX:SharedArchiveFile={archive}",)
        return (f"-XX:ArchiveClassesAtExit={self._archive_draft}",) if draft else ()

    def _keep_class_archive(self) -> None:
        """After a clean exit, the draft the JVM wrote becomes the archive, unless another broker's already
        did; copied under a temporary name, then renamed, so no JVM maps half a file."""
        draft = self._archive_draft
        if not draft.is_file():
            return
        archive = class_archive()
        if not archive.exists():
            staged = archive.with_name(f".{archive.name}.{os.getpid()}")
            shutil.copyfile(draft, staged)
            os.replace(staged, archive)
        draft.unlink()

    def _java_command(self, libs: Path, *main: str, sharing: tuple[str, ...] = ()) -> list[str]:
        return [
            _java(),
            *_JVM_OPTIONS,
            *sharing,
            f"-Dlog4j2.configurationFile={_LOG4J_CONFIG.as_uri()}",
            "-cp",
            f"{libs}/*",
            *main,
        ]

    def _format(self, libs: Path) -> None:
        """Static-quorum storage format (no --standalone, matching controller.quorum.voters)."""
        command = self._java_command(
            # "--cluster-id=ID" in one word: a random id may begin with "-", which argparse would take for an option.
            libs,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={_cluster_id()}",
            "-c",
            str(self._properties_file),
            *(self.security.format_arguments() if self.security is not None else ()),
            sharing=self._class_sharing(draft=False),
        )
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise ServiceError(f"formatting Kafka storage in {self._log_dirs} failed", tail)

    def _launch(self, libs: Path) -> None:
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self._java_command(
                    libs, "kafka.Kafka", str(self._properties_file), sharing=self._class_sharing(draft=True)
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._pid = self._process.pid
        (self.data_dir / "broker.pid").write_text(f"{self._pid}\n")
        write_state(
            self._state_file,
            {
                "pid": self._pid,
                "port": self.port,
                "controller_port": self.controller_port,
                "bootstrap_servers": self.bootstrap_servers,
                "kafka_version": KAFKA_VERSION,
            },
        )

    def _answers(self, admin: AdminClient, deadline: float) -> bool:
        """One readiness attempt: brokers in metadata, then a full produce/group-consume/commit."""
        try:
            if not admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic()))).brokers:
                return False
            return self._group_round_trip(admin, deadline)
        except (KafkaException, TimeoutError):
            return False

    def _group_round_trip(self, admin: AdminClient, deadline: float) -> bool:
        """The first group join is where single-node setups break (offsets topic, coordinator)."""
        created = admin.create_topics([NewTopic(_PROBE_TOPIC, 1, 1)])[_PROBE_TOPIC]
        try:
            created.result(timeout=10)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        token = uuid.uuid4().hex
        producer = Producer({"bootstrap.servers": self.bootstrap_servers, **_PROBE_CLIENT})
        producer.produce(_PROBE_TOPIC, token.encode())
        if producer.flush(max(0.1, deadline - time.monotonic())):
            return False
        return self._consume_and_commit(token, deadline)

    def _consume_and_commit(self, token: str, deadline: float) -> bool:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"{_PROBE_TOPIC}-{token}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **_PROBE_CLIENT,
            }
        )
        try:
            consumer.subscribe([_PROBE_TOPIC])
            while time.monotonic() < deadline and self.is_running():
                message = consumer.poll(0.5)
                if message is not None and message.error() is None and message.value() == token.encode():
                    consumer.commit(message=message, asynchronous=False)
                    return True
            return False
        finally:
            consumer.close()

    def _wait_exit(self, timeout: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        return wait_for_exit(self._pid, str(self._properties_file), timeout)

    def _kill(self) -> None:
        if self.is_running():
            os.kill(self._pid, signal.SIGKILL)
            self._wait_exit(10)
        self._reap()
        self._archive_draft.unlink(missing_ok=True)  # cut off mid-write, perhaps

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None


def _default_data_dir() -> Path:
    return cache_dir() / "kafka-run"


def start_local_broker(data_dir: Path | None = None, port: int = 9092, timeout: float = 90) -> KafkaBroker:
    """The developer's broker: persistent data dir, fixed port; reuses one already running there."""
    return start_local_service(KafkaBroker, Path(data_dir or _default_data_dir()), port, timeout)


def stop_local_broker(data_dir: Path | None = None) -> int | None:
    """Stop the developer's broker; the pid it had, or None when none was running."""
    return stop_service(KafkaBroker, Path(data_dir or _default_data_dir()))


def local_broker_status(data_dir: Path | None = None) -> ServiceStatus:
    return service_status(KafkaBroker, Path(data_dir or _default_data_dir()))
