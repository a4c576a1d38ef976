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
3. the fully quantized model is tried on a calibration sample; if its decisions agree
   with fp32 on at least ``min_agreement`` of the records, it is kept;
4. otherwise each quantizable node is quantized alone to measure how far it moves the
   scores, and nodes are handed back to fp32 from the most sensitive down until the
   sample agrees with a margin (unseen inputs agree a little less), or until half are
   back (the model then fails the gate: int8 in name only is not worth having).

The result and its report (agreement, which nodes stayed fp32, the sample) sit in
the model's ONNX cache; loading ``--backend int8`` reads the report and refuses a model
below the minimum.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nlpkit.errors import NlpkitError
from nlpkit.inference.agreement import agreement, distance
from nlpkit.inference.backends import BACKENDS
from nlpkit.inference.engine import Engine, RecordFailure
from nlpkit.inference.onnx import runtime
from nlpkit.inference.onnx.export import exported_model
from nlpkit.inference.onnx.outliers import ChannelMaxima, is_outlier_node, probed_inputs, split_outliers
from nlpkit.system.hardware import has_vnni
from nlpkit.system.threads import thread_count
from nlpkit.tasks.base import Record, Task

QUANTIZED_OPS = ("MatMul", "Attention")  # where int8 pays; a Gather (embedding lookup) would only lose accuracy
# The sample aims for half the disagreement the minimum allows, and it must be large enough
# to see it: on SST-2, 99.80% on 512 training phrases (all nodes int8) became 98.28% on the
# 872 dev sentences; 2,000 phrases kept 4 nodes fp32, and dev agreed on 99.89%.
CALIBRATION_MARGIN = 0.5
MAX_FP32_SHARE = 2  # keep at most 1/2 of the nodes fp32: past that int8 buys too little to call it int8
Progress = Callable[[str], None]


@dataclass(frozen=True)
class QuantizationReport:
    agreement: float
    records: int
    kept_fp32: list[str]
    quantized: int
    outlier_channels: int  # input channels multiplied in fp32 beside the int8 products
    seconds: float
    data: str
    reduce_range: bool  # 7-bit weights, safe on CPUs without VNNI

    @property
    def as_json(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "records": self.records,
            "kept_fp32": self.kept_fp32,
            "quantized": self.quantized,
            "outlier_channels": self.outlier_channels,
            "seconds": round(self.seconds, 1),
            "data": self.data,
            "reduce_range": self.reduce_range,
        }


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
    reference = _outputs(task, records)
    with tempfile.TemporaryDirectory() as scratch:
        say("measuring activation outliers")
        split_file, outlier_channels = _split_outliers(task, records, exported.path, Path(scratch))
        trial = _Trial(task, records, reference, split_file, Path(scratch))
        candidates = trial.candidates
        kept: list[str] = []
        target = min_agreement + (1 - min_agreement) * CALIBRATION_MARGIN
        score, file = trial.attempt(kept)
        say(f"all {len(candidates)} nodes int8: agreement {score:.2%}")
        if score < target:
            ranked = trial.rank_by_sensitivity(candidates, say)
            for node in ranked[: len(ranked) // MAX_FP32_SHARE]:
                kept.append(node)
                score, file = trial.attempt(kept)
                say(f"{len(kept)} node(s) kept fp32 ({node}): agreement {score:.2%}")
                if score >= target:
                    break
        directory = runtime.cache_dir(task.model.path, task.model.revision)
        staged = directory / f".{runtime.INT8_FILE}.{os.getpid()}"
        shutil.move(file, staged)  # then one rename: a worker loading the model never sees half a file
        os.replace(staged, directory / runtime.INT8_FILE)
    report = QuantizationReport(
        agreement=score,
        records=len(records),
        kept_fp32=kept,
        quantized=len(candidates) - len(kept),
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


def _outputs(task: Task, records: Sequence[Record]) -> list[dict[str, Any] | None]:
    return [None if isinstance(o, RecordFailure) else o.output for o in Engine(task).run(records)]


def _on_session(task: Task, session: Any, backend: str) -> Task:
    """The same task and settings, its model run by an ONNX Runtime ``session``."""
    return type(task)(replace(task.model, backend=BACKENDS[backend], session=session), **task.settings)


def _split_outliers(task: Task, records: Sequence[Record], fp32_file: Path, scratch: Path) -> tuple[Path, int]:
    """The fp32 graph with its outlier input channels split out, measured on ``records``;
    and how many channels that is."""
    probe, split = scratch / "probe.onnx", scratch / "split.onnx"
    probed = probed_inputs(fp32_file, probe)
    maxima = ChannelMaxima(runtime.open_session(probe, thread_count()), probed)
    _outputs(_on_session(task, maxima, "onnx"), records)
    return split, split_outliers(fp32_file, maxima.maxima, split)


class _Trial:
    """Quantizes with some nodes kept fp32 and measures the result against the fp32 outputs."""

    def __init__(
        self, task: Task, records: Sequence[Record], reference: list[Any], fp32_file: Path, scratch: Path
    ) -> None:
        self.task = task
        self.records = records
        self.reference = reference
        self.fp32_file = fp32_file
        self.scratch = scratch
        # 7-bit weights where this CPU lacks VNNI: its 16-bit intermediate sums could overflow with 8.
        self.reduce_range = not has_vnni()
        self.candidates = quantizable_nodes(fp32_file)
        self._count = 0

    def file(self, kept_fp32: Sequence[str], only: Sequence[str] | None = None) -> Path:
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

    def outputs(self, file: Path) -> list[dict[str, Any] | None]:
        return _outputs(_on_session(self.task, runtime.open_session(file, thread_count()), "int8"), self.records)

    def attempt(self, kept_fp32: Sequence[str]) -> tuple[float, Path]:
        file = self.file(kept_fp32)
        return agreement(self.reference, self.outputs(file)), file

    def rank_by_sensitivity(self, nodes: Sequence[str], say: Progress) -> list[str]:
        """Nodes ordered by how far quantizing each alone moves the scores, worst first."""
        moved = {}
        for index, node in enumerate(nodes, 1):
            moved[node] = distance(self.reference, self.outputs(self.file([], only=[node])))
            say(f"sensitivity {index}/{len(nodes)}: {node} {moved[node]:.5f}")
        return sorted(nodes, key=moved.__getitem__, reverse=True)
