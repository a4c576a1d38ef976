"""Worker metrics and health: scraped from a running worker, and the unhealthy answers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import psutil
import pytest

from nlpkit.stream.monitoring import MonitoringServer, WorkerMetrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
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
