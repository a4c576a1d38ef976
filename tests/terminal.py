"""What a person sees at the terminal when a command fails: checked the same way by every test."""

from __future__ import annotations

import subprocess


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a person must read: for usage errors click adds its usage hint, nothing else."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode == 2:  # click's usage error: "Usage: ...", "Try ... --help", then the error
        lines = [line for line in lines if not line.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]
