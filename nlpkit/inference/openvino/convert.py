"""The fp32 OpenVINO model, converted from the model's ONNX export once per weights.

Converted from the ONNX file rather than from the torch model: the export is already cached
per weights and is the graph nlpkit runs, with a sequence classifier's last layer computing
[CLS] only (:mod:`nlpkit.models.cls_only`) and the outputs the tasks read, so converting needs
no torch and no second tracing path, and takes about a second for a 6-layer MiniLM (five from
the torch model). OpenVINO's ONNX frontend turns ONNX Runtime's fused operators (Attention,
SkipLayerNormalization, BiasGelu) back into its own and its CPU plugin fuses those again: on
SST-2 dev the IR made from ONNX ran as fast as one converted from torch (139.7 and 137.9
sequences/s, 2 contended cores). torch is needed only when the ONNX file is not exported yet.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.inference.onnx import runtime as onnx_runtime
from nlpkit.inference.onnx.runtime import CachedGraph, write_report
from nlpkit.inference.openvino import runtime

if TYPE_CHECKING:
    from nlpkit.inference.onnx.export import ExportSource


def converted_model(loaded: ExportSource) -> CachedGraph:
    """The fp32 OpenVINO model of ``loaded``, converting it (and exporting the ONNX file) on first use."""
    if cached := runtime.cached_model(loaded.name, loaded.path, loaded.revision, "fp32"):
        return cached
    import openvino

    exported = onnx_runtime.cached_model(loaded.name, loaded.path, loaded.revision, "fp32")
    if exported is None:  # the one step that needs torch
        from nlpkit.inference.onnx.export import exported_model

        exported = exported_model(loaded)
    directory = runtime.openvino_dir(loaded.path, loaded.revision)
    save_model(openvino.convert_model(str(exported.path)), directory / runtime.FP32_FILE)
    report = {
        "revision": loaded.revision,
        "outputs": exported.report.get("outputs"),
        "first_token_only": exported.first_token_only,
        "openvino": openvino.__version__,
    }
    write_report(directory, runtime.CONVERT_REPORT, report)
    return CachedGraph(directory / runtime.FP32_FILE, report)


def save_model(model: Any, destination: Path) -> None:
    """Write ``model`` as ``destination`` (.xml) and its .bin with full-precision weights.

    Workers started together may all convert: each writes in a scratch directory, then renames
    the weights and the graph into place, the graph last, so a reader never finds a graph whose
    weights are missing; the report that makes either count is written after both.
    """
    import openvino

    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".convert-") as scratch:
        staged = Path(scratch) / destination.name
        openvino.save_model(model, str(staged), compress_to_fp16=False)  # its default halves the weights
        os.replace(staged.with_suffix(".bin"), destination.with_suffix(".bin"))
        os.replace(staged, destination)
