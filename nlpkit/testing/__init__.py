"""What a plugin author's tests need, in one module: tiny random models built in well under a second,
and :func:`run_through_worker`, which puts messages through the worker's own processing into a
database without a broker. ``nlpkit.pytest_plugin`` (loaded by pytest on its own) adds the
``kafka_broker`` and ``nlpkit_database`` fixtures.

The tiny-model helpers import torch and transformers, so they load on first use: a test of a
plugin on the ONNX backends can run messages through the worker without torch in the process.
"""

import importlib
from typing import Any

from nlpkit.testing.worker_run import WorkerRun, run_through_worker

_TINY_MODELS = ("DISTILBERT_HEADS", "save_tiny_bert", "save_tiny_distilbert", "save_tiny_tokenizer", "tiny_vocab")

__all__ = ["WorkerRun", "run_through_worker", *_TINY_MODELS]


def __getattr__(name: str) -> Any:
    if name in _TINY_MODELS:
        return getattr(importlib.import_module("nlpkit.testing.tiny_models"), name)
    raise AttributeError(f"module 'nlpkit.testing' has no attribute {name!r}")
