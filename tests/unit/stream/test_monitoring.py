"""Worker metrics and health: scraped from a running worker, and the unhealthy answers."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request

import psutil
import pytest

from nlpkit.errors import NlpkitError
from nlpkit.stream.monitoring import MonitoringServer, WorkerMetrics, read_metrics_token

TOKEN = "s3cr3t-metrics-token"


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_on(pid: int, port: int) -> list[str]:
    """The addresses process ``pid`` listens on at ``port``, as the kernel's socket table has them."""
    connections = psutil.Process(pid).net_connections(kind="inet")
    return sorted(c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_health_is_503_naming_what_failed_and_a_raising_probe_counts_as_down():
    def broken() -> bool:
        raise RuntimeError("database gone")

    server = MonitoringServer(WorkerMetrics(), {"model_loaded": lambda: True, "database": broken,
                                                "broker": lambda: False}, "127.0.0.1", 0).start()  # fmt: skip
    host, port = server.address
    try:
        status, body = get(f"http://{host}:{port}/healthz")
        assert status == 503
        assert json.loads(body) == {"model_loaded": True, "database": False, "broker": False}
        assert get(f"http://{host}:{port}/nope")[0] == 404
    finally:
        server.stop()


def test_lag_and_broker_state_come_from_librdkafka_statistics():
    metrics = WorkerMetrics()
    metrics.on_stats(json.dumps({
        "brokers": {"127.0.0.1:9092/1": {"state": "UP"}},
        "topics": {"reviews": {"partitions": {"0": {"consumer_lag": 42}, "-1": {"consumer_lag": -1}}}},
    }))  # fmt: skip
    assert metrics.broker_connected()
    assert metrics.lag.labels("reviews", "0")._value.get() == 42


def healthy_server(token: str | None, host: str = "127.0.0.1") -> MonitoringServer:
    checks = {"model_loaded": lambda: True, "database": lambda: True, "broker": lambda: True}
    return MonitoringServer(WorkerMetrics(), checks, host, 0, token).start()


def test_with_a_token_both_paths_answer_only_the_right_bearer(caplog):
    caplog.set_level(logging.DEBUG)
    server = healthy_server(TOKEN)
    base = "http://{}:{}".format(*server.address)
    try:
        for path in ("/metrics", "/healthz"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert (refused.value.code, refused.value.headers["WWW-Authenticate"]) == (401, "Bearer")
            assert refused.value.read() == b""
            assert get(base + path, "wrong-token") == (401, "")
            assert get(base + path, TOKEN[:-1]) == (401, "")
            assert get(base + path, "") == (401, "")
            status, body = get(base + path, TOKEN)
            assert status == 200 and body
        assert json.loads(get(f"{base}/healthz", TOKEN)[1]) == {"model_loaded": True, "database": True, "broker": True}
        assert "nlpkit_predictions_stored" in get(f"{base}/metrics", TOKEN)[1]
        basic = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(basic, timeout=10)
    finally:
        server.stop()
    assert caplog.records and not any(TOKEN in record.getMessage() for record in caplog.records)


def test_without_a_token_both_paths_answer_anyone_and_loopback_gives_no_warning(caplog):
    server = healthy_server(None)
    base = "http://{}:{}".format(*server.address)
    try:
        assert get(f"{base}/metrics")[0] == 200
        assert get(f"{base}/healthz") == (200, json.dumps({"model_loaded": True, "database": True, "broker": True}))
        assert get(f"{base}/healthz", "any-token")[0] == 200
    finally:
        server.stop()
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_beyond_loopback_without_a_token_warns_once_and_with_one_stays_quiet(caplog):
    caplog.set_level(logging.INFO, logger="nlpkit.stream.monitoring")
    healthy_server(None, "0.0.0.0").stop()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "NLPKIT_METRICS_TOKEN" in warnings[0] and "\n" not in warnings[0]
    caplog.clear()
    healthy_server(TOKEN, "0.0.0.0").stop()
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert not any(TOKEN in record.getMessage() for record in caplog.records)


def test_the_token_comes_from_the_variable_or_a_file_stripped(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert read_metrics_token(None, str(path)) == TOKEN
    assert read_metrics_token("", str(path)) == TOKEN
    assert read_metrics_token(f"{TOKEN}\n", None) == TOKEN
    assert read_metrics_token("", "") is None
    assert read_metrics_token(None, None) is None


@pytest.mark.parametrize("content", [None, "", "  \n", b"\xff\xfe", "two x9secretx9"])
def test_a_bad_token_file_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(NlpkitError) as raised:
        read_metrics_token(None, str(path))
    message = str(raised.value)
    assert str(path) in message and "\n" not in message and "x9secretx9" not in message


def test_a_token_in_both_places_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    with pytest.raises(NlpkitError, match="not both"):
        read_metrics_token("other", str(path))


@pytest.mark.integration
def test_a_running_worker_serves_metrics_and_health(kafka_broker, tmp_path, sentiment_model_dir):
    import signal
    import time

    from workers import caught_up, good_message, migrated, start_worker, unique

    from nlpkit.stream.kafka_clients import create_topic, produce

    bootstrap, topic, group = kafka_broker.bootstrap_servers, unique("metrics"), unique("group")
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    migrated(url).dispose()
    create_topic(bootstrap, topic, partitions=2)
    produce(bootstrap, topic, [good_message(i) for i in range(300)] + [(b"bad", b"\xff\xfe")])
    port = free_port()
    worker = start_worker(topic, group, bootstrap, url, sentiment_model_dir, "--metrics-port", str(port),
                          "--batch-size", "50")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not caught_up(bootstrap, group, topic, 2):
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.2)
        time.sleep(6)  # one librdkafka statistics interval, so lag and broker state are fresh
        status, health = get(f"{base}/healthz")
        assert (status, json.loads(health)) == (200, {"model_loaded": True, "database": True, "broker": True})
        assert listening_on(worker.pid, port) == ["127.0.0.1"]  # nothing configured: loopback only
        _, text = get(f"{base}/metrics")
        assert metric(text, "nlpkit_messages_consumed_total", topic=topic) == 301
        assert metric(text, "nlpkit_predictions_stored_total", task="sentiment") == 300
        assert metric(text, "nlpkit_dead_letters_total", task="sentiment", stage="decode") == 1
        assert metric(text, "nlpkit_batch_messages_sum") == 301
        assert metric(text, "nlpkit_inference_seconds_count", task="sentiment") >= 1
        assert metric(text, "nlpkit_end_to_end_seconds_count") == 301
        assert metric(text, "nlpkit_consumer_lag", topic=topic, partition="0") == 0
        assert metric(text, "nlpkit_consumer_lag", topic=topic, partition="1") == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)  # the server went away with the worker


@pytest.mark.integration
def test_the_metrics_host_setting_moves_the_server_off_loopback(
    kafka_broker, tmp_path, sentiment_model_dir, monkeypatch
):
    from workers import migrated, start_worker, stop, unique, wait_for

    from nlpkit.stream.kafka_clients import create_topic

    bootstrap, topic = kafka_broker.bootstrap_servers, unique("metrics-host")
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    migrated(url).dispose()
    create_topic(bootstrap, topic, partitions=1)
    monkeypatch.setenv("NLPKIT_METRICS_HOST", "0.0.0.0")  # the worker's environment is a copy of this one
    port = free_port()
    worker = start_worker(topic, unique("group"), bootstrap, url, sentiment_model_dir, "--metrics-port", str(port))
    try:
        wait_for(lambda: listening_on(worker.pid, port), 120, "the metrics server to listen", [worker])
        assert listening_on(worker.pid, port) == ["0.0.0.0"]
    finally:
        stop(worker)
