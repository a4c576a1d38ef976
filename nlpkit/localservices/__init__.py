"""Local development services: a real Kafka broker and a PostgreSQL server for the demo and the tests.

Both run as ordinary child processes from files on this machine (Kafka jars fetched once
with Maven, PostgreSQL from the distribution's packages), so no Docker is needed. The small
helpers below are what the two services share: where to cache, picking ports, and telling
whether a recorded pid is still the service it was. Imports nothing of nlpkit but errors and
system: the services know nothing of tasks, models or streams.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import psutil

from nlpkit.localservices.errors import ServiceError

Service = TypeVar("Service", bound="LocalService")


@dataclass(frozen=True)
class ServiceStatus:
    """What ``nlpkit services <name> status`` reports."""

    running: bool
    data_dir: Path
    address: str | None = None
    pid: int | None = None


class LocalService(Protocol):
    """What KafkaBroker and PostgresServer have in common for starting, stopping and reporting."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None: ...

    @property
    def pid(self) -> int | None: ...

    @classmethod
    def attach(cls, data_dir: Path) -> LocalService: ...

    def start(self, timeout: float) -> LocalService: ...

    def wait_ready(self, timeout: float) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> ServiceStatus: ...


def start_local_service(service: type[Service], data_dir: Path, port: int, timeout: float) -> Service:
    """The developer's service in ``data_dir``: the one already running there once it answers (it
    may have been started a moment ago by another process), else a new one on ``port``."""
    try:
        running = service.attach(data_dir)
    except ServiceError:
        return service(data_dir, port=port).start(timeout)
    running.wait_ready(timeout)
    return running


def stop_service(service: type[LocalService], data_dir: Path) -> int | None:
    """Stop the service whose state lives in ``data_dir``; its pid, or None when none was running."""
    try:
        running = service.attach(data_dir)
    except ServiceError:
        return None
    pid = running.pid
    running.stop()
    return pid


def service_status(service: type[LocalService], data_dir: Path) -> ServiceStatus:
    data_dir = data_dir.resolve()
    try:
        return service.attach(data_dir).status()
    except ServiceError:
        return ServiceStatus(False, data_dir)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now; sockets stay open until all are picked."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:``port`` (TIME_WAIT leftovers don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def process_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` is a live (not zombie) process whose command line contains ``marker``.

    The marker guards against pid reuse, and zombies count as dead because a service
    whose starter has exited is reparented to an init that may reap it late.
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def wait_for_exit(pid: int, marker: str, timeout: float) -> bool:
    """Wait until the process is gone; False when it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while process_alive(pid, marker):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def read_state(path: Path) -> dict | None:
    """The JSON state a service wrote next to its data, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_state(path: Path, state: dict) -> None:
    """Write atomically, so a reader never sees half a file."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    partial.replace(path)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return f"(no log at {path})"
