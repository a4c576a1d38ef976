"""Intra-op threads: the CPUs this process may use (affinity, container quota), or an override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlpkit.errors import NlpkitError
from nlpkit.system.threads import _cgroup_cpu_quota, configure_threads, parallel_batches


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "150000 100000\n"}, 1),
        ({"cpu.max": "400000 100000\n"}, 4),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_container_quota_is_read_from_cgroup_v2_or_v1(tmp_path: Path, files: dict[str, str], expected) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_cpu_quota(tmp_path) == expected


def test_an_explicit_count_then_the_environment_override_win(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("NLPKIT_THREADS", "2")
        assert configure_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_default_follows_the_cpu_affinity_mask() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "os.environ.pop('NLPKIT_THREADS', None); "
        "from nlpkit.system.threads import configure_threads; print(configure_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"


def test_two_batches_side_by_side_where_there_are_two_threads_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NLPKIT_PARALLEL_BATCHES", raising=False)
    assert (parallel_batches(1), parallel_batches(2), parallel_batches(8)) == (1, 2, 2)
    monkeypatch.setenv("NLPKIT_PARALLEL_BATCHES", "1")  # every batch on all threads: lowest latency
    assert parallel_batches(8) == 1
    monkeypatch.setenv("NLPKIT_PARALLEL_BATCHES", "4")
    assert (parallel_batches(2), parallel_batches(8)) == (2, 4)  # never more batches than threads


@pytest.mark.parametrize("name", ["NLPKIT_THREADS", "NLPKIT_PARALLEL_BATCHES"])
@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_bad_count_in_the_environment_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(NlpkitError, match=f"{name} must be a whole number of at least 1, not '{value}'"):
        configure_threads() if name == "NLPKIT_THREADS" else parallel_batches(2)
