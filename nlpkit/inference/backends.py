"""The ways a model can run, named for ``--backend`` and recorded with every stored prediction.

Kept free of torch so the CLI can offer the names without paying for the import.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

DEFAULT_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Backend:
    """How a model runs: torch with a precision context, or an ONNX Runtime session."""

    name: str
    description: str
    precision: str  # what its matrix multiplies compute in: fp32, bf16 or int8
    autocast_dtype: str | None = None  # a torch dtype's name
    onnx_file: str | None = None  # which cached ONNX model runs it; None runs the torch model

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=device_type, dtype=getattr(torch, self.autocast_dtype))


BACKENDS = {
    backend.name: backend
    for backend in (
        Backend("torch", "fp32 torch", "fp32"),
        Backend(
            "bf16",
            "torch under bf16 autocast: fast only where the CPU/GPU has bf16 units",
            "bf16",
            autocast_dtype="bfloat16",
        ),
        Backend(
            "onnx",
            "fp32 ONNX Runtime with fused kernels; exported beside the model on first use",
            "fp32",
            onnx_file="fp32",
        ),
        Backend("int8", "ONNX Runtime int8, made and checked by `nlpkit models quantize`", "int8", onnx_file="int8"),
    )
}


def get_backend(name: str) -> Backend:
    from nlpkit.errors import NlpkitError

    if name not in BACKENDS:
        raise NlpkitError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


BACKEND_HELP = "; ".join(f"{backend.name}: {backend.description}" for backend in BACKENDS.values())
