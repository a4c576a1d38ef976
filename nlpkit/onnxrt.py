"""ONNX Runtime for the ``onnx`` and ``int8`` backends: export once, cache beside the model, open fast.

The export goes through torch's TorchScript exporter with eager attention, because
that is the graph ONNX Runtime's transformer optimizer recognises: it fuses each
layer's attention, the embeddings with their LayerNorm, bias+GELU and
residual+LayerNorm into single kernels. The newer dynamo exporter produces a graph in
which attention is not fused, and runs ~15% slower here.

Files live in ``MODEL_DIR/onnx/`` (or, when the model directory is read-only, in
``~/.cache/nlpkit/onnx/REVISION/``) and carry the weights' revision, so retraining a
model in place invalidates them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import transformers

from nlpkit.errors import ModelNotFoundError, NlpkitError

if TYPE_CHECKING:
    import onnxruntime

    from nlpkit.modeling import LoadedModel

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_REPORT = "export.json"
INT8_REPORT = "int8.json"
INPUT_NAMES = ("input_ids", "attention_mask")
_OPSET = 17  # what ONNX Runtime's transformer fusions are written against


def cache_dir(model_dir: Path, revision: str) -> Path:
    """Where a model's ONNX files go: next to it if writable, else the user's cache."""
    beside = model_dir / "onnx"
    if os.access(model_dir, os.W_OK) or (beside.is_dir() and os.access(beside, os.W_OK)):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nlpkit" / "onnx" / revision


def read_report(directory: Path, name: str, revision: str) -> dict[str, Any] | None:
    """A cache report if it exists and belongs to these weights, else None."""
    file = directory / name
    if not file.is_file():
        return None
    report = json.loads(file.read_text())
    return report if report.get("revision") == revision else None


def write_report(directory: Path, name: str, report: dict[str, Any]) -> None:
    (directory / name).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def exported_model(loaded: LoadedModel) -> Path:
    """The optimised fp32 ONNX file for ``loaded``, exporting it on first use."""
    directory = cache_dir(loaded.path, loaded.revision)
    if cached := cached_model(loaded.name, loaded.path, loaded.revision, "fp32"):
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    outputs = export(loaded, directory / FP32_FILE)
    write_report(
        directory,
        EXPORT_REPORT,
        {"revision": loaded.revision, "outputs": outputs, "torch": torch.__version__, "opset": _OPSET},
    )
    return directory / FP32_FILE


class _TensorOutputs(torch.nn.Module):
    """The model with its ModelOutput flattened to the tensors the tasks read, in a fixed order."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return tuple(output[name] for name in self.names)


def export(loaded: LoadedModel, destination: Path) -> list[str]:
    """Export, then fuse with ONNX Runtime's transformer optimizer; returns the output names."""
    from onnxruntime.transformers import optimizer

    eager = getattr(transformers, type(loaded.model).__name__).from_pretrained(loaded.path, attn_implementation="eager")
    eager.eval()
    sample, mask = _dummy_inputs(loaded, 8)
    names, axes = _output_axes(eager, loaded)
    raw = destination.with_suffix(".raw.onnx")
    with warnings.catch_warnings(), quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TensorOutputs(eager, names),
            (sample, mask),
            str(raw),
            input_names=list(INPUT_NAMES),
            output_names=names,
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,
        )
    config = loaded.model.config
    fused = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=0,  # fusions only; the session applies the hardware-specific graph optimisations
    )
    fused.save_model_to_file(str(destination))
    raw.unlink()
    log.info("exported %s to %s (%s)", loaded.name, destination, fused.get_fused_operator_statistics())
    return names


def _dummy_inputs(loaded: LoadedModel, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((2, length), loaded.tokenizer.unk_token_id or 100, dtype=torch.long)
    return ids, torch.ones_like(ids)


def _output_axes(model: torch.nn.Module, loaded: LoadedModel) -> tuple[list[str], dict[str, dict[int, str]]]:
    """The tensor outputs and which of their axes follow the sequence length, found by running two lengths.

    A classification head's logits are (batch, labels) and a token head's (batch,
    tokens, labels): only trying tells which axis moves with the input.
    """
    with torch.inference_mode():
        short, long = (model(*_dummy_inputs(loaded, length)) for length in (8, 9))  # (input_ids, attention_mask)
    names = [key for key, value in short.items() if isinstance(value, torch.Tensor)]
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    for name in names:
        moving = {axis for axis in range(1, short[name].dim()) if short[name].shape[axis] != long[name].shape[axis]}
        axes[name] = {0: "batch"} | {axis: "sequence" for axis in moving}
    return names, axes


@contextlib.contextmanager
def quiet_logger(name: str | None) -> Iterator[None]:
    """Only errors from logger ``name`` for a block: the exporter and the quantizer log advice at
    WARNING that is about their internals, not anything a user could act on."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def open_session(file: Path, threads: int) -> onnxruntime.InferenceSession:
    """A CPU session with every graph optimisation on and torch's thread count."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def cached_model(name: str, model_dir: Path, revision: str, kind: str, min_agreement: float = 1.0) -> Path | None:
    """The cached ONNX file of ``kind`` ("fp32" or "int8") for these weights, or None if fp32 is not exported yet.

    An int8 file must exist (only ``nlpkit models quantize`` can make one: it needs real
    inputs) and must have agreed with fp32 on at least ``min_agreement`` of its sample.
    """
    directory = cache_dir(model_dir, revision)
    if kind == "fp32":
        found = read_report(directory, EXPORT_REPORT, revision) and (directory / FP32_FILE).is_file()
        return directory / FP32_FILE if found else None
    report = read_report(directory, INT8_REPORT, revision)
    if report is None or not (directory / INT8_FILE).is_file():
        raise ModelNotFoundError(
            f"model '{name}' has no int8 version for its current weights; make one with "
            f"`nlpkit models quantize {name} --task TASK --data FILE` (a sample of real inputs), "
            "or use --backend onnx"
        )
    if report["agreement"] < min_agreement:
        raise NlpkitError(
            f"refusing the int8 version of '{name}': it agreed with fp32 on {report['agreement']:.1%} of "
            f"{report['records']} calibration records, below the minimum {min_agreement:.1%}; re-quantize with "
            f"`nlpkit models quantize {name} --min-agreement {min_agreement}` (it keeps more layers in "
            "fp32), or use --backend onnx"
        )
    return directory / INT8_FILE


def run_session(session: onnxruntime.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
    return dict(zip(names, values, strict=True))
