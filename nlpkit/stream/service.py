"""A worker as a long-running service: its log lines, its signals, its metrics and health server.

``nlpkit consume`` is this plus argument parsing: what a container or a terminal needs around
:class:`nlpkit.stream.worker.Worker` lives here rather than in the command.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from nlpkit.inference import Engine
from nlpkit.store import Database
from nlpkit.stream.monitoring import MonitoringServer, WorkerMetrics
from nlpkit.stream.worker import Worker, WorkerConfig, WorkerStats


def serve(
    config: WorkerConfig,
    engines: Mapping[str, Engine],
    database: Database,
    *,
    hook: Any = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    metrics_token: str | None = None,
) -> WorkerStats:
    """Run a worker until SIGTERM/SIGINT (or ``config.max_messages``), reporting as it goes.

    Progress lines go to the ``nlpkit`` logger at INFO; librdkafka's own lines only once the
    broker has answered (before that, a failure to connect is reported as one clear error).
    With ``metrics_port``, ``/metrics`` and ``/healthz`` are served for as long as it runs,
    behind ``metrics_token`` when given (see :func:`nlpkit.stream.monitoring.read_metrics_token`).
    """
    metrics = WorkerMetrics() if metrics_port is not None else None
    worker = Worker(config, engines, database, hook=hook, metrics=metrics)
    logging.getLogger("nlpkit").setLevel(logging.INFO)
    client_log = logging.getLogger("nlpkit.kafka")
    client_log.setLevel(logging.WARNING)

    def once_connected(_record: logging.LogRecord) -> bool:
        return worker.connected

    client_log.addFilter(once_connected)
    worker.handle_signals()
    server = None
    try:
        if metrics is not None:
            checks = {
                "model_loaded": lambda: bool(engines),
                "database": database.reachable,
                "broker": metrics.broker_connected,
            }
            server = MonitoringServer(metrics, checks, metrics_host, metrics_port, metrics_token).start()
        return worker.run()
    finally:
        if server is not None:
            server.stop()
        client_log.removeFilter(once_connected)  # the logger outlives this worker (a test runs several)
