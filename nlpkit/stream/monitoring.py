"""What a running worker tells its operators: Prometheus metrics and a health endpoint.

``nlpkit consume --metrics-port P`` serves, on 127.0.0.1 unless configured otherwise:

- ``/metrics``: messages consumed, predictions stored and dead letters (by task and
  stage), tombstones skipped (by topic), messages per batch, inference time per batch and per task, the time from a
  message's Kafka timestamp to its row being stored, and consumer lag per partition
  (from librdkafka's statistics: high watermark minus committed offset);
- ``/healthz``: ``{"model_loaded", "database", "broker"}``, status 200 when all are true
  and 503 otherwise, so an orchestrator can restart or stop routing to a sick worker.

With a token (``NLPKIT_METRICS_TOKEN``, or the file ``NLPKIT_METRICS_TOKEN_FILE`` or
``--metrics-token-file`` names, read once at start), every request must carry
``Authorization: Bearer <token>``; any other gets 401 with ``WWW-Authenticate: Bearer`` and
no body. A server bound beyond loopback without a token is allowed, with one warning at
start: Prometheus scraping a worker inside a private network is a valid setup, and the
operator who exposes it further is told. The token is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nlpkit.errors import NlpkitError

log = logging.getLogger("nlpkit.stream.monitoring")

STATS_INTERVAL_MS = 5000
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own (several workers in one
    process, as in tests, do not collide), plus the broker state seen in librdkafka's stats."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "nlpkit_messages_consumed", "Messages read from Kafka.", ["topic"], registry=self.registry
        )
        self.stored = Counter(
            "nlpkit_predictions_stored", "Prediction rows committed.", ["task"], registry=self.registry
        )
        self.dead_letters = Counter(
            "nlpkit_dead_letters", "Dead letters committed.", ["task", "stage"], registry=self.registry
        )
        self.tombstones = Counter(
            "nlpkit_tombstones",
            "Tombstones (null values) recorded and skipped.",
            ["topic"],
            registry=self.registry,
        )
        self.batch_messages = Histogram(
            "nlpkit_batch_messages", "Messages per processed batch.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference_seconds = Histogram(
            "nlpkit_inference_seconds",
            "Seconds from a batch's records going to a task's model until their outcomes are back.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "nlpkit_end_to_end_seconds",
            "Kafka message timestamp to row stored.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lag = Gauge(
            "nlpkit_consumer_lag",
            "High watermark minus committed offset.",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.database_retries = Counter(
            "nlpkit_database_retries",
            "Batch writes retried while the database was unavailable.",
            registry=self.registry,
        )
        self.broker_up = False
        self._stats_seen = 0.0

    def consumer_settings(self) -> dict[str, Any]:
        """librdkafka settings that feed :meth:`on_stats` and :meth:`on_error`."""
        return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.on_stats, "error_cb": self.on_error}

    def on_stats(self, payload: str) -> None:
        stats = json.loads(payload)
        self._stats_seen = time.monotonic()
        self.broker_up = any(broker.get("state") == "UP" for broker in stats.get("brokers", {}).values())
        for topic, details in stats.get("topics", {}).items():
            for partition, numbers in details.get("partitions", {}).items():
                if partition != "-1" and numbers.get("consumer_lag", -1) >= 0:
                    self.lag.labels(topic, partition).set(numbers["consumer_lag"])

    def on_error(self, error: KafkaError) -> None:
        log.warning("Kafka: %s", error.str())
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.broker_up = False

    def broker_connected(self) -> bool:
        """Up in the latest statistics, and those not older than three intervals."""
        fresh = time.monotonic() - self._stats_seen < 3 * STATS_INTERVAL_MS / 1000
        return self.broker_up and fresh


def read_metrics_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token the metrics server requires, or None for none.

    ``token`` is the token itself (``NLPKIT_METRICS_TOKEN``), ``token_file`` the path of a file
    holding it (read here, once; surrounding whitespace stripped). Setting both, a file that
    cannot be read or is empty, or a token that is not printable ASCII without spaces is a
    one-line :class:`NlpkitError` naming the file, never showing the token.
    """
    if token and token_file:
        raise NlpkitError("set NLPKIT_METRICS_TOKEN or a metrics token file, not both")
    source = "NLPKIT_METRICS_TOKEN"
    if token_file:
        source = f"metrics token file {token_file}"
        try:
            token = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise NlpkitError(f"{source} cannot be read: {reason}") from None
        if not token.strip():
            raise NlpkitError(f"{source} is empty")
    token = (token or "").strip()
    if not token:
        return None
    if not (token.isascii() and token.isprintable()) or any(char.isspace() for char in token):
        raise NlpkitError(f"the token from {source} must be printable ASCII without spaces")
    return token


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


class MonitoringServer:
    """``/metrics`` and ``/healthz`` on a background thread, behind a bearer token when given one."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        checks: dict[str, Callable[[], bool]],
        host: str,
        port: int,
        token: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.checks = checks
        self._token = token.encode("ascii") if token else None
        handler = self._handler()
        self.server = ThreadingHTTPServer((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="nlpkit-metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def start(self) -> MonitoringServer:
        self.thread.start()
        host, port = self.address
        guarded = " (bearer token required)" if self._token else ""
        log.info("metrics and health on http://%s:%d/metrics and /healthz%s", host, port, guarded)
        if self._token is None and not is_loopback(host):
            log.warning(
                "metrics server on %s:%d is reachable beyond this host and requires no token; "
                "set NLPKIT_METRICS_TOKEN or NLPKIT_METRICS_TOKEN_FILE to require one",
                host,
                port,
            )
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (always, without one)."""
        if self._token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1", "replace"), self._token)

    def health(self) -> tuple[bool, dict[str, bool]]:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a failing probe is an unhealthy answer, not a crashed server
                results[name] = False
        return all(results.values()), results

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                if not server.authorized(self.headers.get("Authorization")):
                    self.send_response(HTTPStatus.UNAUTHORIZED)
                    self.send_header("WWW-Authenticate", "Bearer")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/metrics":
                    self._reply(HTTPStatus.OK, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    healthy, results = server.health()
                    status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
                    self._reply(status, json.dumps(results).encode(), "application/json")
                else:
                    self._reply(HTTPStatus.NOT_FOUND, b"see /metrics and /healthz\n", "text/plain")

            def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
                log.debug("%s %s", self.address_string(), format % args)

        return Handler
