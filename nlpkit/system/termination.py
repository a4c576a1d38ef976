"""SIGTERM as an interruption.

Python's default for SIGTERM is to die on the spot: no ``finally`` runs, so a training run
stopped by ``kill``, a scheduler or a container runtime would stay "running" in the runs
table forever. Inside :func:`sigterm_interrupts` it unwinds like Ctrl-C instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM. A ``KeyboardInterrupt``, so whatever already handles
    Ctrl-C (closing files, recording an interrupted run) handles it too."""


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(f"received {signal.Signals(signum).name}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler comes back
    after it. Only the main thread may set handlers, so elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
