"""Making the int8 backend: ONNX Runtime dynamic int8, calibrated on real inputs until it agrees with fp32.

Quantizing every matrix multiply of a small model flips too many answers (about 1.4%
of SST-2 dev on a 6-layer MiniLM), because a few layers carry activation outliers
that one int8 scale per tensor cannot hold. So:

1. weights are int8 per output channel, activations uint8 with a scale computed per
   batch at run time (VNNI does u8 x s8), embeddings and the classifier head stay fp32;
   on a CPU without VNNI the weights get 7 bits, because AVX2 kernels add pairs of
   u8 x s8 products in 16 bits, which full 8-bit weights can overflow;
2. the few input channels with outlier activations, found on the calibration sample,
   are multiplied in fp32 beside the int8 product (:mod:`nlpkit.inference.onnx.outliers`), so that
   they no longer set the scale of every other channel;
3. nodes are handed back to fp32, most sensitive first, until the calibration sample
   agrees with fp32 (:mod:`nlpkit.inference.int8`, the search both int8 backends run).

The result and its report (agreement, which nodes stayed fp32, the sample) sit in
the model's ONNX cache; loading ``--backend int8`` reads the report and refuses a model
below the minimum.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nlpkit.errors import NlpkitError
from nlpkit.inference.int8 import Progress, QuantizationReport, Trial, keep_fp32_until_agreed, on_session, outputs
from nlpkit.inference.onnx import runtime
from nlpkit.inference.onnx.export import exported_model
from nlpkit.inference.onnx.outliers import ChannelMaxima, is_outlier_node, probed_inputs, split_outliers
from nlpkit.system.hardware import has_vnni
from nlpkit.system.threads import thread_count
from nlpkit.tasks.base import Record, Task

QUANTIZED_OPS = ("MatMul", "Attention")  # where int8 pays; a Gather (embedding lookup) would only lose accuracy


def quantize(
    task: Task,
    records: Sequence[Record],
    *,
    min_agreement: float,
    data: str,
    progress: Progress | None = None,
) -> QuantizationReport:
    """Build and cache the int8 model of ``task``'s (fp32 torch) model, calibrated on ``records``."""
    if task.model.backend.name != "torch":
        raise NlpkitError("quantize from the fp32 torch model (backend 'torch')")
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    say("exporting the fp32 ONNX model")
    exported = exported_model(task.model)
    reference = outputs(task, records)
    with tempfile.TemporaryDirectory() as scratch:
        say("measuring activation outliers")
        split_file, outlier_channels = _split_outliers(task, records, exported.path, Path(scratch))
        trial = _Trial(task, records, reference, split_file, Path(scratch))
        score, file, kept = keep_fp32_until_agreed(trial, min_agreement, say)
        directory = runtime.cache_dir(task.model.path, task.model.revision)
        staged = directory / f".{runtime.INT8_FILE}.{os.getpid()}"
        shutil.move(file, staged)  # then one rename: a worker loading the model never sees half a file
        os.replace(staged, directory / runtime.INT8_FILE)
    report = QuantizationReport(
        agreement=score,
        records=len(records),
        kept_fp32=kept,
        quantized=len(trial.candidates) - len(kept),
        outlier_channels=outlier_channels,
        seconds=time.perf_counter() - started,
        data=data,
        reduce_range=trial.reduce_range,
    )
    runtime.write_report(
        directory,
        runtime.INT8_REPORT,
        report.as_json
        | {
            "revision": task.model.revision,
            "min_agreement": min_agreement,
            "first_token_only": exported.first_token_only,  # the graph it was quantized from
        },
    )
    return report


def quantizable_nodes(file: Path) -> list[str]:
    """The nodes int8 may take: the model's matrix multiplies, not the outliers' fp32 side products."""
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type in QUANTIZED_OPS and not is_outlier_node(node.name)]


def _split_outliers(task: Task, records: Sequence[Record], fp32_file: Path, scratch: Path) -> tuple[Path, int]:
    """The fp32 graph with its outlier input channels split out, measured on ``records``;
    and how many channels that is."""
    probe, split = scratch / "probe.onnx", scratch / "split.onnx"
    probed = probed_inputs(fp32_file, probe)
    maxima = ChannelMaxima(runtime.open_session(probe, thread_count()), probed)
    outputs(on_session(task, maxima, "onnx"), records)
    return split, split_outliers(fp32_file, maxima.maxima, split)


class _Trial(Trial):
    """Each trial a dynamic int8 file of the split fp32 graph, with some nodes left fp32."""

    backend = "int8"

    def __init__(
        self, task: Task, records: Sequence[Record], reference: list[Any], fp32_file: Path, scratch: Path
    ) -> None:
        super().__init__(task, records, reference, quantizable_nodes(fp32_file))
        self.fp32_file = fp32_file
        self.scratch = scratch
        # 7-bit weights where this CPU lacks VNNI: its 16-bit intermediate sums could overflow with 8.
        self.reduce_range = not has_vnni()
        self._count = 0

    def quantized(self, kept_fp32: Sequence[str], only: Sequence[str] | None = None) -> Path:
        self._count += 1
        destination = self.scratch / f"trial-{self._count}.onnx"
        with runtime.quiet_logger(
            None
        ):  # the root logger; it advises a pre-processing step that would undo the fused graph
            self._quantize(destination, kept_fp32, only)
        return destination

    def _quantize(self, destination: Path, kept_fp32: Sequence[str], only: Sequence[str] | None) -> None:
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            self.fp32_file,
            destination,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=list(only or [node for node in self.candidates if node not in kept_fp32]),
            per_channel=True,
            reduce_range=self.reduce_range,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},  # types of fused ops' outputs
        )

    def session(self, model: Path) -> Any:
        return runtime.open_session(model, thread_count())
