"""Running models: loading one on a backend (fp32 or bf16 torch, ONNX Runtime fp32 or int8, OpenVINO
fp32, bf16 or int8), the engine that batches records by length with dynamic padding, the
agreement checks that decide whether a faster backend may stand in for fp32, and ``tuning``, which
times the backends on a model and records the fastest that agrees for ``--backend auto``.

Above tasks/ and models/, below store/, stream/ and cli/: nothing here touches a database or
Kafka. The ONNX backends live in ``nlpkit.inference.onnx`` (export, runtime, int8 quantization
with outlier channels kept in fp32), the OpenVINO ones in ``nlpkit.inference.openvino`` (converted
from the ONNX export, int8 by NNCF), and the search both int8 makers run in ``int8``; once their
files exist, both kinds run without importing torch.
"""

from nlpkit.inference.backends import BACKENDS, Backend, get_backend
from nlpkit.inference.engine import DEFAULT_BATCH_SIZE, Engine, EngineRun, RecordFailure
from nlpkit.inference.loading import LoadedModel, load_model, native_bf16, pick_device

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "Backend",
    "Engine",
    "EngineRun",
    "LoadedModel",
    "RecordFailure",
    "get_backend",
    "load_model",
    "native_bf16",
    "pick_device",
]
