"""OpenVINO for the ``openvino``, ``openvino-bf16`` and ``openvino-int8`` backends: the cached files, and
sessions that run them. Nothing here imports torch, so a worker on an OpenVINO backend never does.

Files live in ``MODEL_DIR/openvino/`` (or ``~/.cache/nlpkit/openvino/REVISION/`` when the model
directory is read-only), as OpenVINO IR (``.xml`` graph, ``.bin`` weights), each pair with a report
that carries the weights' revision and nlpkit's graph version: the same rules as the ONNX files,
so retraining a model in place, or a change to the exported graph, makes them anew.

A session compiles for the CPU on the configured thread count: one stream of all of them (the
``LATENCY`` hint) where batches run one at a time, or, where the engine runs batches side by side
(:func:`nlpkit.system.threads.parallel_batches`), one stream per batch with one infer request
each (``THROUGHPUT`` with that many streams). A lone request gets only its stream's threads, so
streams pay only where calls really overlap (on 2 busy Zen 3 cores, SST-2 dev one batch at a time:
136.7 sequences/s with two streams, 139.7 with one). The inference precision is always
set, and checked after compiling: left alone, OpenVINO computes in bf16 wherever the CPU has
bf16 units, and asked for bf16 where it has none it computes in fp32 without a word.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from nlpkit.errors import NlpkitError
from nlpkit.inference.onnx.runtime import CachedGraph, FreeList, admit_int8, cache_dir, read_report
from nlpkit.system.hardware import has_bf16

if TYPE_CHECKING:
    import openvino

FOLDER = "openvino"
FP32_FILE = "model.xml"  # weights beside it in model.bin
INT8_FILE = "model.int8.xml"
CONVERT_REPORT = "convert.json"
INT8_REPORT = "int8.json"
# The inference precision hint for each floating-point precision (an int8 model's unquantized parts too).
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_dir(model_dir: Path, revision: str) -> Path:
    return cache_dir(model_dir, revision, FOLDER)


def cached_model(
    name: str, model_dir: Path, revision: str, kind: str, min_agreement: float = 1.0
) -> CachedGraph | None:
    """The cached OpenVINO model of ``kind`` ("fp32" or "int8") for these weights, or None if fp32 is not
    converted yet; an int8 model must pass the same gate as ONNX Runtime's (:func:`admit_int8`)."""
    directory = openvino_dir(model_dir, revision)
    file, report_name = (FP32_FILE, CONVERT_REPORT) if kind == "fp32" else (INT8_FILE, INT8_REPORT)
    report = read_report(directory, report_name, revision)
    found = report is not None and (directory / file).is_file() and (directory / file).with_suffix(".bin").is_file()
    if kind == "fp32":
        return CachedGraph(directory / file, report) if found else None
    return CachedGraph(
        directory / file, admit_int8(name, report if found else None, min_agreement, "openvino-int8", "openvino")
    )


class _Output(NamedTuple):
    name: str


class Session:
    """A compiled OpenVINO model that answers like an ONNX Runtime session (``get_outputs``, ``run``),
    so the engine, :class:`nlpkit.inference.onnx.outliers.ChannelMaxima` and the quantizers' wrappers
    run either alike. It has one infer request per stream, each serving one call at a time: a
    request holds its buffers between calls, and an ONNX Runtime session may be shared by threads."""

    def __init__(self, compiled: openvino.CompiledModel) -> None:
        self.compiled = compiled
        self._names = [output.get_any_name() for output in compiled.outputs]
        self.parallel = int(compiled.get_property("NUM_STREAMS"))
        if self.parallel > 1:  # only then do threads call it at once
            first_inference(compiled)
        self._requests = FreeList([compiled.create_infer_request() for _ in range(self.parallel)])

    @property
    def precision(self) -> str:
        return compiled_precision(self.compiled)

    def get_outputs(self) -> list[_Output]:
        return [_Output(name) for name in self._names]

    def run(self, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._requests.taken() as request:  # copied out: the next call reuses the request's output buffers
            values = request.infer(feeds, share_outputs=False)
        by_name = dict(zip(self._names, values.to_tuple(), strict=True))
        return [by_name[name] for name in names]


def first_inference(compiled: openvino.CompiledModel) -> None:
    """One inference on one thread, before any run side by side. The first call that hands OpenVINO's
    Python binding a numpy array sets up a static in it, and two threads making that first call at
    once can deadlock: one holds the interpreter lock waiting for the static's guard while the other
    holds the guard waiting for the lock (a stream bench's two batch threads hung so for good,
    OpenVINO 2026.4.1). Once set up, calls from any number of threads are safe."""
    request = compiled.create_infer_request()
    request.infer({model_input.get_any_name(): np.ones((1, 2), np.int64) for model_input in compiled.inputs})
    _ = request.get_output_tensor(0).data  # the outputs' way into numpy too


def compiled_precision(compiled: openvino.CompiledModel) -> str:
    """What a compiled model computes its floating-point parts in, named as backends name it: "fp32", "bf16"..."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint, hint)


def int8_float_precision(report: dict[str, Any] | None = None) -> str:
    """What an int8 model's unquantized parts (LayerNorm, Softmax, GELU, the nodes its search held back)
    compute in: bf16 where the CPU has bf16 units, as OpenVINO's own default there, and as they did when
    the search measured the model's agreement with fp32 (``report``'s ``float_precision``; files made
    before it was recorded were measured in fp32, and keep it; no report: a file about to be made here).
    On SST-2 dev, Zen 4, two streams: ``imdb-minilm``'s int8 model ran 646-650 sentences/s with fp32
    float parts, 930-960 with bf16, against 813-823 for the whole model in bf16. A file measured in
    bf16 but loaded on a CPU without bf16 units computes them in fp32: closer to fp32 than what was
    measured, never further."""
    measured = "bf16" if report is None else report.get("float_precision", "fp32")
    return "bf16" if measured == "bf16" and has_bf16() else "fp32"


def open_session(file: Path | Any, threads: int, precision: str = "fp32", parallel: int = 1) -> Session:
    """A CPU session of an IR file (or an in-memory ``openvino.Model``) computing its floating-point parts in
    ``precision`` ("fp32" or "bf16"), with ``parallel`` streams sharing ``threads`` (one: every call on all
    the threads).

    Refuses a precision OpenVINO will not compute in on this CPU rather than record one it never used.
    """
    import openvino

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
    }
    if parallel > 1:
        config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": parallel}
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
    session = Session(openvino.Core().compile_model(str(file) if isinstance(file, Path) else file, "CPU", config))
    if session.precision != precision:
        raise NlpkitError(
            f"OpenVINO computes in {session.precision} on this CPU, not {precision}; use --backend openvino"
        )
    return session
