"""Helpers the streaming tests share: unique names, migrated databases, worker processes, waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from nlpkit.store import Database, migrated_database


def unique(prefix: str) -> str:
    """A topic or group name no other test uses, so tests can share one broker."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def migrated(url: str) -> Database:
    database = migrated_database(url)
    return database


def start_worker(topic: str, group: str, bootstrap: str, url: str, model: Path, *extra: str) -> subprocess.Popen:
    """``nlpkit consume`` for sentiment as a real process (one torch thread), output captured."""
    command = [sys.executable, "-m", "nlpkit", "--database-url", url, "consume", "--topic", topic, "--task"]
    command += ["sentiment", "--group", group, "--bootstrap-servers", bootstrap, "--model", str(model), *extra]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NLPKIT_THREADS": "1"},
    )


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, processes: Sequence[subprocess.Popen] = ()
) -> None:
    """Poll ``condition`` until true; fail on timeout or when a watched worker exits.

    A condition that raises counts as "not yet": fault tests ask services they have
    stopped on purpose. The last such error is named if the wait times out.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as exc:  # noqa: BLE001 - see the docstring
            last_error = exc
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"a worker exited while waiting for {what}:\n{process.stdout.read()}")
        time.sleep(0.1)
    detail = f" (last error: {last_error})" if last_error else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def stop(process: subprocess.Popen) -> str:
    """SIGTERM, wait for a clean exit (status 0), return the worker's output."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    return output


def good_message(index: int) -> tuple[bytes, bytes]:
    if index % 3 == 0:  # plain text, id from the key
        return f"good-{index}".encode(), f"plain review number {index}, quite good".encode()
    return f"k{index}".encode(), json.dumps({"id": f"good-{index}", "text": f"review {index}: a fine film"}).encode()


def committed_and_end(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[list[int], list[int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
        return [tp.offset for tp in committed], ends
    finally:
        consumer.close()


def caught_up(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    committed, ends = committed_and_end(bootstrap, group, topic, partitions)
    return committed == ends
