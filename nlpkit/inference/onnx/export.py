"""Exporting a model to ONNX for the ``onnx`` and ``int8`` backends: once per weights, with torch.

The export goes through torch's TorchScript exporter with eager attention, because
that is the graph ONNX Runtime's transformer optimizer recognises: it fuses each
layer's attention, the embeddings with their LayerNorm, bias+GELU and
residual+LayerNorm into single kernels. The newer dynamo exporter produces a graph in
which attention is not fused, and runs ~15% slower here.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers

from nlpkit.inference.onnx.runtime import (
    EXPORT_REPORT,
    FP32_FILE,
    INPUT_NAMES,
    CachedGraph,
    cache_dir,
    cached_model,
    quiet_logger,
    write_report,
)
from nlpkit.models.cls_only import compute_first_token_only, reads_first_token_only
from nlpkit.models.files import ModelShape, quiet_loading

log = logging.getLogger(__name__)


class ExportSource(Protocol):
    """What exporting reads of a loaded model (``nlpkit.inference.ExportSource`` has it all)."""

    name: str
    path: Path
    revision: str
    model_class: str  # the transformers head class the ONNX graph is traced from
    config: dict[str, Any]
    tokenizer: Any


_OPSET = 17  # what ONNX Runtime's transformer fusions are written against


def exported_model(loaded: ExportSource) -> CachedGraph:
    """The optimised fp32 ONNX file for ``loaded``, exporting it on first use."""
    if cached := cached_model(loaded.name, loaded.path, loaded.revision, "fp32"):
        return cached
    directory = cache_dir(loaded.path, loaded.revision)
    directory.mkdir(parents=True, exist_ok=True)
    # Workers started together may all export: each in a scratch directory, then one atomic rename.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as scratch:
        staged = Path(scratch) / FP32_FILE
        outputs, first_token_only = export(loaded, staged)
        os.replace(staged, directory / FP32_FILE)
    report = {
        "revision": loaded.revision,
        "outputs": outputs,
        "first_token_only": first_token_only,
        "torch": torch.__version__,
        "opset": _OPSET,
    }
    write_report(directory, EXPORT_REPORT, report)
    return CachedGraph(directory / FP32_FILE, report)


class _TensorOutputs(torch.nn.Module):
    """The model with its ModelOutput flattened to the tensors the tasks read, in a fixed order."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return tuple(output[name] for name in self.names)


def export(loaded: ExportSource, destination: Path) -> tuple[list[str], bool]:
    """Export, then fuse with ONNX Runtime's transformer optimizer.

    Returns the output names, and whether the graph computes the last layer for the
    first token only (a sequence classifier: :mod:`nlpkit.models.cls_only`).
    """
    from onnxruntime.transformers import optimizer

    with quiet_loading():  # exporting is a step of loading: no progress bar of its own
        eager = getattr(transformers, loaded.model_class).from_pretrained(loaded.path, attn_implementation="eager")
    eager.eval()
    first_token_only = reads_first_token_only(type(eager).__name__)
    if first_token_only:
        compute_first_token_only(eager)
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
    shape = ModelShape.of(loaded.config)
    fused = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=shape.heads,
        hidden_size=shape.hidden,
        opt_level=0,  # fusions only; the session applies the hardware-specific graph optimisations
    )
    fused.save_model_to_file(str(destination))
    raw.unlink()
    log.info("exported %s to %s (%s)", loaded.name, destination, fused.get_fused_operator_statistics())
    return names, first_token_only


def _dummy_inputs(loaded: ExportSource, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((2, length), loaded.tokenizer.unk_token_id or 100, dtype=torch.long)
    return ids, torch.ones_like(ids)


def _output_axes(model: torch.nn.Module, loaded: ExportSource) -> tuple[list[str], dict[str, dict[int, str]]]:
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
