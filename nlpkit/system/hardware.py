"""What this CPU can do, read from /proc/cpuinfo: the instruction sets that decide which
precisions pay off (bf16 units, int8 dot products)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

# u8 x s8 dot products that accumulate straight into 32 bits. Without them (AVX2 alone)
# ONNX Runtime multiplies pairs into 16 bits first, where full 8-bit weights can overflow.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo_lines() -> list[str]:
    """/proc/cpuinfo's lines; none where it cannot be read (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags."""
    line = next((line for line in _cpuinfo_lines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def has_vnni() -> bool:
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)


def has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def describe() -> str:
    """The CPU in a line, with what decides which precisions pay off: machines that report the
    same model name ("AMD EPYC") differ in exactly this."""
    model = next((line.partition(":")[2].strip() for line in _cpuinfo_lines() if line.startswith("model name")), "CPU")
    width = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "no AVX2"
    extras = [name for name, present in (("VNNI", has_vnni()), ("BF16", has_bf16())) if present]
    return f"{model} ({' + '.join([width, *extras])}), {len(os.sched_getaffinity(0))} cores"
