"""Hardware detection: the instruction sets and GPUs that decide which precisions pay off."""

from __future__ import annotations

import pytest

from nlpkit.system import hardware

SAPPHIRE_RAPIDS = "fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni"
ZEN3 = "fpu avx2 fma sse4_2"


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Pretend /proc says ``flags`` and the NVIDIA driver lists ``gpus``."""

    def pretend(flags: str, model: str = "Some CPU", gpus: tuple[str, ...] = ()) -> None:
        lines = [f"model name\t: {model}", f"flags\t\t: {flags}"]
        monkeypatch.setattr(hardware, "_cpuinfo_lines", lambda: lines)
        for number, name in enumerate(gpus):
            card = tmp_path / f"0000:0{number}:00.0"
            card.mkdir()
            (card / "information").write_text(f"Model: \t\t {name}\nIRQ:   \t\t 42\n")
        monkeypatch.setattr(hardware, "NVIDIA_GPUS", tmp_path)
        hardware.cpu_flags.cache_clear()
        hardware.gpus.cache_clear()

    yield pretend
    hardware.cpu_flags.cache_clear()
    hardware.gpus.cache_clear()


def test_an_amx_xeon_is_named_with_its_tile_units(machine):
    machine(SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8481C")
    assert hardware.amx_types() == ["bf16", "int8"]
    assert hardware.has_bf16() and hardware.has_vnni()
    assert hardware.describe().startswith("Intel(R) Xeon(R) Platinum 8481C (AVX-512 + VNNI + BF16 + AMX bf16/int8)")


def test_an_avx2_only_cpu_has_none_of_them(machine):
    machine(ZEN3, "AMD EPYC")
    assert hardware.amx_types() == [] and not hardware.has_bf16() and not hardware.has_vnni()
    assert hardware.describe().startswith("AMD EPYC (AVX2), ")
    assert "GPU" not in hardware.describe()


def test_gpus_are_named_from_the_driver_without_loading_cuda(machine):
    machine(ZEN3, "AMD EPYC", gpus=("NVIDIA H100 80GB HBM3",))
    assert hardware.gpus() == ("NVIDIA H100 80GB HBM3",)
    assert hardware.describe().endswith("; GPU NVIDIA H100 80GB HBM3")


def test_the_fingerprint_is_the_flags_that_decide_the_backend_and_the_threads(machine):
    machine(SAPPHIRE_RAPIDS + " sse4_2 popcnt", "Intel(R) Xeon(R) Platinum 8481C")
    assert hardware.fingerprint(2) == (
        "avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_tile amx_bf16 amx_int8; 2 threads"
    )
    machine(ZEN3, "AMD EPYC")
    assert hardware.fingerprint(2) == "avx2; 2 threads"
    assert hardware.fingerprint(1) == "avx2; 1 thread"
    machine(ZEN3 + " sse4_1 aes", "Some other AVX2 CPU")  # flags no backend uses change nothing
    assert hardware.fingerprint(2) == "avx2; 2 threads"
    machine("fpu sse4_2", gpus=("NVIDIA H100 80GB HBM3",))
    assert hardware.fingerprint(4) == "no avx2; 4 threads; GPU NVIDIA H100 80GB HBM3"
