"""What this CPU can do, read from /proc/cpuinfo: the instruction sets that decide which
precisions pay off (bf16 units, int8 dot products)."""

from __future__ import annotations

import functools
from pathlib import Path

# u8 x s8 dot products that accumulate straight into 32 bits. Without them (AVX2 alone)
# ONNX Runtime multiplies pairs into 16 bits first, where full 8-bit weights can overflow.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags; empty where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def has_vnni() -> bool:
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)


def has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)
