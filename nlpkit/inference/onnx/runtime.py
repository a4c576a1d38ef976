"""ONNX Runtime for the ``onnx`` and ``int8`` backends: the cached files, and sessions that run them.

Exporting needs torch (:mod:`nlpkit.inference.onnx.export`) and happens once per weights;
everything here runs without it, so a worker on an ONNX backend never imports torch.

Files live in ``MODEL_DIR/onnx/`` (or, when the model directory is read-only, in
``~/.cache/nlpkit/onnx/REVISION/``) and carry the weights' revision, so retraining a
model in place invalidates them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import ModelNotFoundError, NlpkitError
from nlpkit.system.cache import cache_dir as nlpkit_cache_dir
from nlpkit.system.hardware import has_vnni

if TYPE_CHECKING:
    import onnxruntime

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_REPORT = "export.json"
INT8_REPORT = "int8.json"
INPUT_NAMES = ("input_ids", "attention_mask")
# Bumped when the exported graph changes shape, so files made by an older nlpkit are made anew.
# 2: sequence classifiers compute the last layer for the first token only (nlpkit.models.cls_only).
GRAPH_VERSION = 2


def cache_dir(model_dir: Path, revision: str, folder: str = "onnx") -> Path:
    """Where a model's ONNX files (or, with ``folder="openvino"``, its OpenVINO ones) go: next to it
    if writable, else the user's cache."""
    beside = model_dir / folder
    if os.access(model_dir, os.W_OK) or (beside.is_dir() and os.access(beside, os.W_OK)):
        return beside
    return nlpkit_cache_dir() / folder / revision


def read_report(directory: Path, name: str, revision: str) -> dict[str, Any] | None:
    """A cache report if it exists and belongs to these weights, else None."""
    file = directory / name
    if not file.is_file():
        return None
    report = json.loads(file.read_text())
    return report if report.get("revision") == revision and report.get("graph") == GRAPH_VERSION else None


def write_report(directory: Path, name: str, report: dict[str, Any]) -> None:
    """Write a report whole or not at all: another process may be reading the cache."""
    staged = directory / f".{name}.{os.getpid()}"
    staged.write_text(json.dumps(report | {"graph": GRAPH_VERSION}, indent=2, sort_keys=True) + "\n")
    os.replace(staged, directory / name)


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


def open_session(file: Path, threads: int, parallel: int = 1) -> onnxruntime.InferenceSession | SessionPool:
    """A CPU session with every graph optimisation on, running on ``threads`` threads; with ``parallel``
    above 1, that many sessions of ``threads // parallel`` threads each, for batches run side by side."""
    if parallel > 1:
        share = max(1, threads // parallel)
        return SessionPool([open_session(file, share) for _ in range(parallel)])
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


class FreeList:
    """Objects handed to one thread at a time: sessions, or OpenVINO's infer requests (each holds its
    buffers between calls). A caller waits while all are in use."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for item in items:
            self._free.put(item)

    @contextlib.contextmanager
    def taken(self) -> Iterator[Any]:
        item = self._free.get()
        try:
            yield item
        finally:
            self._free.put(item)


class SessionPool:
    """Sessions of one file that answer like one (``get_outputs``, ``run``) and run ``parallel`` calls at
    once, one per session: what :class:`nlpkit.inference.engine.Engine` feeds its batches to side by side."""

    def __init__(self, sessions: list[onnxruntime.InferenceSession]) -> None:
        self._sessions = FreeList(sessions)
        self.parallel = len(sessions)

    def get_outputs(self) -> list[Any]:
        return self._sessions.items[0].get_outputs()

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._sessions.taken() as session:
            return session.run(names, feeds)


@dataclass(frozen=True)
class CachedGraph:
    """An ONNX file of the cache and the report written with it."""

    path: Path
    report: dict[str, Any]

    @property
    def first_token_only(self) -> bool:
        """Whether the graph computes the last layer for the first token only (a sequence classifier)."""
        return bool(self.report.get("first_token_only"))


def cached_model(
    name: str, model_dir: Path, revision: str, kind: str, min_agreement: float = 1.0
) -> CachedGraph | None:
    """The cached ONNX file of ``kind`` ("fp32" or "int8") for these weights, or None if fp32 is not exported yet.

    An int8 file must exist (only ``nlpkit models quantize`` can make one: it needs real
    inputs) and must have agreed with fp32 on at least ``min_agreement`` of its sample.
    """
    directory = cache_dir(model_dir, revision)
    if kind == "fp32":
        exported = read_report(directory, EXPORT_REPORT, revision)
        found = exported is not None and (directory / FP32_FILE).is_file()
        return CachedGraph(directory / FP32_FILE, exported) if found else None
    report = read_report(directory, INT8_REPORT, revision)
    found = report is not None and (directory / INT8_FILE).is_file()
    return CachedGraph(directory / INT8_FILE, admit_int8(name, report if found else None, min_agreement))


def admit_int8(
    name: str, report: dict[str, Any] | None, min_agreement: float, backend: str = "int8", fallback: str = "onnx"
) -> dict[str, Any]:
    """The gate every int8 backend passes at load; returns the int8 file's ``report`` (None: no file).

    The file must exist for the current weights (only ``nlpkit models quantize`` can make
    one: it needs real inputs), must suit this CPU (8-bit weights overflow without VNNI,
    so files quantized for VNNI carry ``reduce_range`` false), and must have agreed with
    fp32 on at least ``min_agreement`` of its calibration sample. ``fallback`` is the
    backend of the same graph in fp32 that each refusal suggests.
    """
    make = f"nlpkit models quantize {name} --task TASK --data FILE" + (
        "" if backend == "int8" else f" --backend {backend}"
    )
    if report is None:
        raise ModelNotFoundError(
            f"model '{name}' has no {backend} version for its current weights; make one with "
            f"`{make}` (a sample of real inputs), or use --backend {fallback}"
        )
    if not report.get("reduce_range") and not has_vnni():
        raise NlpkitError(
            f"the {backend} version of '{name}' was quantized for CPUs with VNNI (8-bit weights), and this CPU "
            f"has none: its int8 sums could overflow; re-quantize it here with `{make}`, or use --backend {fallback}"
        )
    if report["agreement"] < min_agreement:
        if report.get("min_agreement", 0.0) >= min_agreement:  # the search aimed this high and kept all it may fp32
            advice = f"its search kept as many layers fp32 as it may and fell short: use --backend {fallback}"
        else:
            advice = (f"re-quantize with `{make} --min-agreement {min_agreement}` (it keeps more layers in fp32), "
                      f"or use --backend {fallback}")  # fmt: skip
        raise NlpkitError(
            f"refusing the {backend} version of '{name}': it agreed with fp32 on {report['agreement']:.1%} of "
            f"{report['records']} calibration records, below the minimum {min_agreement:.1%}; {advice}"
        )
    return report


def run_session(session: onnxruntime.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
    return dict(zip(names, values, strict=True))
