"""Files the CLI writes: exports, reports, models, checkpoints, databases. None of them writable by group or
world, whatever the umask."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

# Owner reads and writes, everyone else may read; group and world never write.
FILE_MODE = 0o644
SHARED_WRITE = 0o022
NO_SHARED_WRITE = ~SHARED_WRITE


def forbid_shared_write() -> None:
    """Add group and world write to the process umask, keeping whatever else it already masks.

    Why: the CLI creates files and directories in many places, much of it inside libraries
    (transformers' ``save_pretrained``, safetensors, torch, SQLite), all with the default
    modes 0o666 and 0o777 that only the umask narrows. Under a permissive umask (0o000 in
    some containers and CI runners) other accounts could then swap a trained model or edit
    a checkpoint. The umask is the one place that covers every such file, including those
    added later; a stricter umask the user set (0o077, say) stays as it is.
    """
    os.umask(os.umask(0) | SHARED_WRITE)


@contextmanager
def output_file(path: Path | str | None, newline: str | None = None) -> Iterator[TextIO]:
    """A text stream to ``path``, or stdout when it is None or ``-``.

    The mode is forced after opening as well, so an existing file that was
    group- or world-writable stops being so when nlpkit rewrites it.
    """
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(descriptor, os.fstat(descriptor).st_mode & NO_SHARED_WRITE & 0o777)
    with open(descriptor, "w", encoding="utf-8", newline=newline) as stream:
        yield stream
