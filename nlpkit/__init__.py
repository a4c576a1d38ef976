"""nlpkit: DistilBERT task plugins fed from Kafka, stored in SQL, trained and distilled in place.

What is importable from here (``__all__``) is the public API, the one surface plugin authors and
Python users may rely on; with ``nlpkit.testing`` it is all docs/plugins.md documents. Every
other module is internal and may change. ``import nlpkit`` loads no torch, transformers or
Kafka client: the names that need them are imported on first use.
"""

import importlib
import importlib.metadata
from typing import Any

from nlpkit.errors import DataFormatError, InvalidRecordError, ModelNotFoundError, NlpkitError
from nlpkit.hookspecs import StoredBatch, hookimpl
from nlpkit.tasks import (
    EncodedExample,
    Example,
    Prediction,
    Record,
    Task,
    TaskModel,
    TaskOption,
    Window,
    metrics,
    softmax,
)
from nlpkit.tasks.readers import TEXT_COLUMNS, read_rows, text_field

__version__ = importlib.metadata.version("nlpkit")

# name -> the module that defines it, imported when the name is first asked for.
_ON_FIRST_USE = {
    "pipeline": "nlpkit.pipelines",
    "Pipeline": "nlpkit.pipelines",
    "load_task": "nlpkit.pipelines",
    "ModelRegistry": "nlpkit.pipelines",
    "Engine": "nlpkit.inference",
    "CliState": "nlpkit.cli.common",
    "pass_state": "nlpkit.cli.common",
    "model_revision": "nlpkit.models",
    "quiet_loading": "nlpkit.models",
    "read_metadata": "nlpkit.models",
    "write_metadata": "nlpkit.models",
}

__all__ = [
    "TEXT_COLUMNS",
    "DataFormatError",
    "EncodedExample",
    "Example",
    "InvalidRecordError",
    "ModelNotFoundError",
    "NlpkitError",
    "Prediction",
    "Record",
    "StoredBatch",
    "Task",
    "TaskModel",
    "TaskOption",
    "Window",
    "hookimpl",
    "metrics",
    "read_rows",
    "softmax",
    "text_field",
    *_ON_FIRST_USE,
]


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module 'nlpkit' has no attribute {name!r}")
