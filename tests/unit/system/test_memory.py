"""trim_heap hands freed heap memory back to the system: the fix for the worker's RSS creeping up."""

from __future__ import annotations

import ctypes
import os

from nlpkit.system.memory import trim_heap

CHUNK = 2048  # far below glibc's mmap threshold, so every chunk comes from the heap
CHUNKS = 100_000  # about 200 MiB
MIB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_chunks_stuck_behind_a_live_one_are_released():
    """The fragmentation a worker builds up, in miniature: many small chunks freed, one after
    them still in use, so malloc cannot shrink the heap from its top and keeps them resident."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(CHUNK) for _ in range(CHUNKS)]
    for chunk in chunks:
        ctypes.memset(chunk, 1, CHUNK)  # touched, so the pages are really resident
    pinned = libc.malloc(CHUNK)
    try:
        for chunk in chunks:
            libc.free(chunk)
        fragmented = rss_bytes()
        assert trim_heap() is True  # glibc on this machine: malloc_trim is there and ran
        trimmed = rss_bytes()
    finally:
        libc.free(pinned)
    assert fragmented - trimmed > 100 * MIB, f"RSS {fragmented / MIB:.0f} -> {trimmed / MIB:.0f} MiB"
