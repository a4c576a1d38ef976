"""What this machine can do, read from /proc: the CPU's instruction sets that decide which
precisions pay off (bf16 units, int8 dot products, AMX tiles) and the GPUs there are."""

from __future__ import annotations

import functools
import os
from pathlib import Path

# u8 x s8 dot products that accumulate straight into 32 bits. Without them (AVX2 alone)
# ONNX Runtime multiplies pairs into 16 bits first, where full 8-bit weights can overflow.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Intel's Advanced Matrix Extensions: tile units that multiply bf16 (and int8) matrices several
# times faster than AVX-512 does in fp32.
AMX_FLAGS = {"amx_bf16": "bf16", "amx_int8": "int8"}
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
# The flags that decide which backend runs a model fastest (vector width, int8 dot products, bf16 and
# fp16 units, AMX tiles): the CPU part of the fingerprint `--backend auto` keys its choice by.
BACKEND_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)


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


def amx_types() -> list[str]:
    """The data types this CPU's AMX tiles multiply ("bf16", "int8"); empty without AMX."""
    return [kind for flag, kind in AMX_FLAGS.items() if flag in cpu_flags()]


@functools.cache
def gpus() -> tuple[str, ...]:
    """The NVIDIA GPUs the driver reports (model names), read without loading CUDA or torch."""
    names = []
    for information in sorted(NVIDIA_GPUS.glob("*/information")):
        for line in information.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.partition(":")[2].strip())
    return tuple(names)


def describe() -> str:
    """The machine in a line, with what decides which precisions pay off: machines that report the
    same model name ("AMD EPYC", "Intel Xeon") differ in exactly this."""
    model = next((line.partition(":")[2].strip() for line in _cpuinfo_lines() if line.startswith("model name")), "CPU")
    width = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "no AVX2"
    extras = [name for name, present in (("VNNI", has_vnni()), ("BF16", has_bf16())) if present]
    if amx_types():
        extras.append(f"AMX {'/'.join(amx_types())}")
    line = f"{model} ({' + '.join([width, *extras])}), {len(os.sched_getaffinity(0))} cores"
    return line + "".join(f"; GPU {name}" for name in gpus())


def fingerprint(threads: int) -> str:
    """This machine as ``--backend auto`` tells machines apart, e.g. ``avx2; 2 threads``: the
    :data:`BACKEND_FLAGS` its CPU has, the threads a model runs on (torch and the graph runtimes
    scale differently with them), and its GPUs. Two machines with the same fingerprint would choose
    the same backend; the model name is left out, as flags, not marketing names, decide."""
    flags = " ".join(flag for flag in BACKEND_FLAGS if flag in cpu_flags()) or "no avx2"
    count = f"{threads} thread" + ("" if threads == 1 else "s")
    return "; ".join([flags, count, *(f"GPU {name}" for name in gpus())])
