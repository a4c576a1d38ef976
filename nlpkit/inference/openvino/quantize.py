"""Making the ``openvino-int8`` backend: NNCF's post-training quantization, held to the gate ``int8`` is.

NNCF, OpenVINO's own tool, quantizes statically: weights int8 per output channel, each
activation int8 over a range fixed on the calibration sample, marked by FakeQuantize nodes
that OpenVINO's CPU plugin runs as int8 kernels. Choices:

1. the calibration inputs are the batches the engine forms from the calibration records
   (length-sorted, each padded to its longest), so the ranges are those the model will meet;
2. ``ModelType.TRANSFORMER``: NNCF leaves the operations whose int8 versions hurt
   transformers (LayerNorm, Softmax, GELU) in float and moves activation outliers into the
   weights with SmoothQuant: that is how the outlier handling carries over. nlpkit's own split of
   outlier channels (:mod:`nlpkit.inference.onnx.outliers`) did not pay here: on the starter
   MiniLM (random head) SST-2 dev agreement rose from 96.8% to 97.6%, but throughput fell from
   110 to 68 sequences/s;
3. on a CPU without VNNI the weights get 7 bits (NNCF's overflow fix), for the reason ``int8``'s do;
4. nodes are handed back to fp32 (NNCF's ignored scope) until the calibration sample agrees
   with fp32: the search of :mod:`nlpkit.inference.int8`. NNCF's own accuracy control
   (``quantize_with_accuracy_control``, with agreement as its metric) was tried first and did
   not converge: with SmoothQuant it ended at 81% agreement after six minutes, and without,
   each node it handed back moved the disagreement between 3.3% and 4.9%;
5. what stays unquantized (the float operations and the nodes handed back) computes in bf16 where
   the CPU has bf16 units (:func:`runtime.int8_float_precision`), and the search measures the
   agreement so: "kept fp32" then means kept out of int8.

The model and its report sit in the model's OpenVINO cache; loading ``--backend openvino-int8``
refuses it below the minimum agreement, as ``int8`` does.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nlpkit.errors import NlpkitError
from nlpkit.inference.int8 import Progress, QuantizationReport, Trial, keep_fp32_until_agreed, on_session, outputs
from nlpkit.inference.onnx.runtime import quiet_logger, write_report
from nlpkit.inference.openvino import runtime
from nlpkit.inference.openvino.convert import converted_model, save_model
from nlpkit.system.hardware import has_vnni
from nlpkit.system.threads import thread_count
from nlpkit.tasks.base import Record, Task


def quantize(
    task: Task,
    records: Sequence[Record],
    *,
    min_agreement: float,
    data: str,
    progress: Progress | None = None,
) -> QuantizationReport:
    """Build and cache the OpenVINO int8 model of ``task``'s (fp32 torch) model, calibrated on ``records``."""
    import openvino

    if task.model.backend.name != "torch":
        raise NlpkitError("quantize from the fp32 torch model (backend 'torch')")
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    say("converting the fp32 model to OpenVINO")
    converted = converted_model(task.model)
    fp32 = openvino.Core().read_model(str(converted.path))
    reference = outputs(task, records)
    say("collecting calibration batches")
    recorder = _Recorder(runtime.open_session(fp32, thread_count()))
    outputs(on_session(task, recorder, "openvino"), records)
    say("quantizing with NNCF")
    trial = _Trial(task, records, reference, fp32, recorder.feeds)
    score, model, kept = keep_fp32_until_agreed(trial, min_agreement, say)
    directory = runtime.openvino_dir(task.model.path, task.model.revision)
    save_model(model, directory / runtime.INT8_FILE)
    report = QuantizationReport(
        agreement=score,
        records=len(records),
        kept_fp32=kept,
        quantized=len(trial.candidates) - len(kept),
        outlier_channels=None,  # SmoothQuant scales them instead
        seconds=time.perf_counter() - started,
        data=data,
        reduce_range=trial.reduce_range,
    )
    facts = {
        "revision": task.model.revision,
        "min_agreement": min_agreement,
        "nncf": _nncf_version(),
        "float_precision": trial.float_precision,
    }
    write_report(
        directory,
        runtime.INT8_REPORT,
        report.as_json | facts | {"first_token_only": converted.first_token_only},
    )
    return report


class _Recorder:
    """Runs a session and keeps every batch fed to it: the calibration inputs, as the engine forms them."""

    def __init__(self, session: runtime.Session) -> None:
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def get_outputs(self) -> list[Any]:
        return self.session.get_outputs()

    def run(self, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(dict(feeds))
        return self.session.run(names, feeds)


def quantized_nodes(model: Any) -> list[str]:
    """The matrix multiplies NNCF quantized: those fed through a FakeQuantize."""
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul"
        and any(value.get_source_output().get_node().get_type_name() == "FakeQuantize" for value in op.inputs())
    ]


class _Trial(Trial):
    """Each trial an NNCF-quantized copy of the fp32 model in memory, with some nodes in its ignored scope."""

    backend = "openvino-int8"

    def __init__(
        self, task: Task, records: Sequence[Record], reference: list[Any], fp32: Any, feeds: list[dict[str, Any]]
    ) -> None:
        self.fp32 = fp32
        self.feeds = feeds
        # 7-bit weights where this CPU lacks VNNI: its 16-bit intermediate sums could overflow with 8.
        self.reduce_range = not has_vnni()
        self.float_precision = runtime.int8_float_precision()  # measured as it will run here
        self._whole = self._quantize(ignored=[])  # what NNCF quantizes, when nothing is held back, says which nodes
        super().__init__(task, records, reference, quantized_nodes(self._whole))

    def quantized(self, kept_fp32: Sequence[str], only: Sequence[str] | None = None) -> Any:
        if only is not None:
            return self._quantize(ignored=[node for node in self.candidates if node not in only])
        return self._quantize(ignored=kept_fp32) if kept_fp32 else self._whole

    def session(self, model: Any) -> runtime.Session:
        return runtime.open_session(model, thread_count(), self.float_precision)

    def _quantize(self, ignored: Sequence[str]) -> Any:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        overflow_fix = OverflowFix.ENABLE if self.reduce_range else OverflowFix.DISABLE
        # NNCF logs each step at INFO and draws progress bars on stdout: neither is anything a user acts on.
        with quiet_logger("nncf"), contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(
                self.fp32.clone(),
                nncf.Dataset(self.feeds),
                subset_size=len(self.feeds),
                target_device=nncf.TargetDevice.CPU,
                model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(names=list(ignored)),
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow_fix),
            )


def _nncf_version() -> str:
    import nncf

    return nncf.__version__
