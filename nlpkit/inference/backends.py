"""The ways a model can run, named for ``--backend`` and recorded with every stored prediction.

Kept free of torch so the CLI can offer the names without paying for the import.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from nlpkit.system.hardware import has_bf16

DEFAULT_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Backend:
    """How a model runs: torch with a precision context, an ONNX Runtime session, or an OpenVINO one."""

    name: str
    description: str
    precision: str  # what its matrix multiplies compute in: fp32, bf16 or int8
    torch_dtype: str | None = None  # a torch dtype's name: torch backends other than fp32 load their weights in it
    onnx_file: str | None = None  # which cached ONNX model runs it ("fp32", "int8"); None runs the torch model
    openvino_file: str | None = None  # which cached OpenVINO model runs it ("fp32", "int8"), computing in ``precision``
    compiled: bool = False  # the torch model goes through torch.compile (inductor) when loaded

    @property
    def is_graph(self) -> bool:
        """Whether a cached graph file runs it (ONNX Runtime, OpenVINO) rather than the torch model."""
        return self.onnx_file is not None or self.openvino_file is not None

    def runs_here(self) -> bool:
        """Whether this machine computes in the backend's precision. OpenVINO asked for bf16 on a CPU
        without bf16 units quietly computes in fp32, and every prediction would record a precision it
        never used; torch's bf16 runs anywhere (emulated, slowly), so the bench shows what it costs."""
        return self.openvino_file is None or self.precision != "bf16" or has_bf16()

    def emulated(self, on_cpu: bool) -> bool:
        """Whether torch would emulate this backend's bf16: on a CPU without bf16 units it runs slower
        than fp32 and takes minutes to time, so neither `--backend auto` nor the bench times it unasked."""
        return self.precision == "bf16" and not self.is_graph and on_cpu and not has_bf16()

    def autocast(self, device_type: str, weights_dtype: Any) -> contextlib.AbstractContextManager[Any]:
        """What a forward pass on the torch backends runs under. A model loaded for inference holds its
        weights in ``torch_dtype`` already and needs nothing: autocast would re-cast every weight on
        every call. A model being trained keeps fp32 master weights, so it computes under autocast."""
        if self.torch_dtype is None:
            return contextlib.nullcontext()
        import torch

        dtype = getattr(torch, self.torch_dtype)
        if weights_dtype == dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=dtype)


BACKENDS = {
    backend.name: backend
    for backend in (
        Backend("torch", "fp32 torch", "fp32"),
        Backend(
            "bf16",
            "torch with bf16 weights: fast only where the CPU/GPU has bf16 units",
            "bf16",
            torch_dtype="bfloat16",
        ),
        Backend(
            "torch-compiled",
            "fp32 torch through torch.compile: faster once compiled, which takes about a minute in each process",
            "fp32",
            compiled=True,
        ),
        Backend(
            "bf16-compiled",
            "bf16 torch through torch.compile: where the CPU/GPU has bf16 units; compiles for about a minute",
            "bf16",
            torch_dtype="bfloat16",
            compiled=True,
        ),
        Backend(
            "onnx",
            "fp32 ONNX Runtime with fused kernels; exported beside the model on first use",
            "fp32",
            onnx_file="fp32",
        ),
        Backend("int8", "ONNX Runtime int8, made and checked by `nlpkit models quantize`", "int8", onnx_file="int8"),
        Backend(
            "openvino",
            "fp32 OpenVINO, converted from the ONNX export beside the model on first use",
            "fp32",
            openvino_file="fp32",
        ),
        Backend(
            "openvino-bf16",
            "OpenVINO computing in bf16: only on CPUs with bf16 units (AVX512-BF16, AMX)",
            "bf16",
            openvino_file="fp32",
        ),
        Backend(
            "openvino-int8",
            "OpenVINO int8 by NNCF, made and checked by `nlpkit models quantize --backend openvino-int8`",
            "int8",
            openvino_file="int8",
        ),
    )
}
# The int8 backends: each needs its file made from real inputs by `nlpkit models quantize --backend NAME`.
INT8_BACKENDS = tuple(
    name for name, backend in BACKENDS.items() if "int8" in (backend.onnx_file, backend.openvino_file)
)


def get_backend(name: str) -> Backend:
    from nlpkit.errors import NlpkitError

    if name not in BACKENDS:
        raise NlpkitError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backends_here() -> list[str]:
    """The backends this machine can run, in registry order (what ``nlpkit bench`` times by default)."""
    return [name for name, backend in BACKENDS.items() if backend.runs_here()]


BACKEND_HELP = "; ".join(f"{backend.name}: {backend.description}" for backend in BACKENDS.values())
