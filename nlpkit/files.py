"""Files the CLI writes for people: exports, reports. None of them world-writable, whatever the umask."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

# Owner reads and writes, everyone else may read; group and world never write.
FILE_MODE = 0o644
NO_SHARED_WRITE = ~0o022


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
