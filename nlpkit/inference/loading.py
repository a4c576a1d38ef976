"""Loading models for inference on a backend, and running one padded batch through them.

torch is imported only by the torch backends (``torch``, ``bf16``): a model on an ONNX or
OpenVINO backend whose file is already made loads with its tokenizer and ONNX Runtime or
OpenVINO alone, which keeps a worker's memory to a few hundred megabytes instead of the half
gigabyte that importing the PyPI build of torch costs by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import ModelNotFoundError, NlpkitError
from nlpkit.inference.backends import DEFAULT_MIN_AGREEMENT, Backend, get_backend
from nlpkit.models.files import (
    ModelLookup,
    id2label,
    load_tokenizer,
    max_input_length,
    model_revision,
    quiet_loading,
    read_config,
    read_metadata,
    resolve_model_path,
)
from nlpkit.system.hardware import has_bf16
from nlpkit.system.threads import apply_to_torch, parallel_batches, thread_count

if TYPE_CHECKING:
    import torch

    from nlpkit.inference.onnx.runtime import CachedGraph


@dataclass
class LoadedModel:
    """A model ready for inference, with what is needed to record where a prediction came from.

    ``model`` is the torch module on the torch backends and None on the ONNX and OpenVINO
    ones, which run ``session`` instead; everything else is the same whichever runs.
    """

    name: str
    revision: str
    path: Path
    model_class: str  # the transformers head class, e.g. DistilBertForSequenceClassification
    tokenizer: Any
    config: dict[str, Any]  # the model's config.json
    max_length: int
    backend: Backend
    device: str  # "cpu", "cuda", "cuda:1"
    metadata: dict[str, Any] = field(default_factory=dict)  # the model directory's nlpkit.json
    model: Any = None  # the torch module (torch backends)
    session: Any = None  # an ONNX Runtime session, or an OpenVINO one that answers alike (graph backends)
    first_token_only: bool = False  # a sequence classifier's last layer computes [CLS] only (nlpkit.models.cls_only)

    @classmethod
    def from_torch(
        cls, name: str, path: Path, model: Any, tokenizer: Any, backend: Backend, device: Any
    ) -> LoadedModel:
        """Wrap a torch model held in memory (one being trained on ``device``) so tasks can evaluate it.

        A sequence classifier's last layer is set to compute [CLS] only, as for inference: the
        loss reads that one position too, so training skips the rest with the same gradients.
        """
        from nlpkit.models.cls_only import first_token_only_where_possible

        config = model.config.to_dict()
        return cls(
            name=name,
            revision="training",
            path=path,
            model_class=type(model).__name__,
            tokenizer=tokenizer,
            config=config,
            max_length=max_input_length(config, tokenizer),
            backend=backend,
            device=str(device),
            model=model,
            first_token_only=first_token_only_where_possible(model),
        )

    @cached_property
    def id2label(self) -> dict[int, str]:
        """Label names by class index (built once: tasks read it for every record)."""
        return id2label(self.config)

    @property
    def parallel_batches(self) -> int:
        """How many batches :meth:`forward` may be given at once from different threads, each running
        on its share of the threads (graph backends on several threads); 1 where a batch takes them all."""
        return getattr(self.session, "parallel", 1)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor output of one padded batch, as float32 arrays, whatever the backend.

        Safe to call from :attr:`parallel_batches` threads at once."""
        if self.session is not None:
            from nlpkit.inference.onnx.runtime import run_session

            return run_session(self.session, input_ids, attention_mask)
        import torch

        with torch.inference_mode(), self.backend.autocast(self.device_type, self.model.dtype):
            output = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.model.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.model.device),
            )
        return {key: value.float().cpu().numpy() for key, value in output.items() if isinstance(value, torch.Tensor)}


def native_bf16(device: str = "auto") -> bool:
    """Whether bf16 runs natively: on CPUs with AVX512-BF16 or AMX, on GPUs that support it.

    Without hardware support torch emulates bf16 matmuls, which is slower than fp32.
    """
    chosen = pick_device(device)
    if chosen.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return has_bf16()


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    ref: str,
    model_class: str,
    *,
    backend: str = "torch",
    device: str = "auto",
    lookup: ModelLookup | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> LoadedModel:
    """Load a model and its tokenizer for inference with the named transformers head class.

    The ONNX and OpenVINO backends run on CPU and open their session here (exporting the
    model on first use, the one time they need torch); the int8 ones refuse a quantized model
    whose agreement with fp32, measured when it was made, is below ``min_agreement``.
    """
    name, path = resolve_model_path(ref, lookup)
    chosen_backend = get_backend(backend)
    tokenizer = load_tokenizer(path, ref)
    config = read_config(path)
    loaded = LoadedModel(
        name=name,
        revision=model_revision(path),
        path=path,
        model_class=model_class,
        tokenizer=tokenizer,
        config=config,
        max_length=max_input_length(config, tokenizer),
        backend=chosen_backend,
        device="cpu",
        metadata=read_metadata(path),
    )
    if chosen_backend.is_graph:
        if device not in ("auto", "cpu"):
            raise NlpkitError(f"the {backend} backend runs on CPU; on {device} use torch or bf16")
        graph = (
            _open_openvino(loaded, min_agreement) if chosen_backend.openvino_file else _open_onnx(loaded, min_agreement)
        )
        loaded.first_token_only = graph.first_token_only
    else:
        _load_torch(loaded, ref, device)
    return loaded


def _open_onnx(loaded: LoadedModel, min_agreement: float) -> CachedGraph:
    from nlpkit.inference.onnx import runtime

    graph = runtime.cached_model(loaded.name, loaded.path, loaded.revision, loaded.backend.onnx_file, min_agreement)
    if graph is None:  # fp32, not exported yet: the one time an ONNX backend needs torch
        from nlpkit.inference.onnx.export import exported_model

        graph = exported_model(loaded)
    loaded.session = runtime.open_session(graph.path, thread_count(), parallel_batches())
    return graph


def _open_openvino(loaded: LoadedModel, min_agreement: float) -> CachedGraph:
    from nlpkit.inference.openvino import runtime

    if not loaded.backend.runs_here():
        raise NlpkitError(
            f"the {loaded.backend.name} backend needs a CPU with bf16 units (AVX512-BF16 or AMX), and this one has "
            "none: OpenVINO would compute in fp32; use --backend openvino"
        )
    kind = loaded.backend.openvino_file
    graph = runtime.cached_model(loaded.name, loaded.path, loaded.revision, kind, min_agreement)
    if graph is None:  # fp32, not converted yet (exported first, if need be: then torch is imported)
        from nlpkit.inference.openvino.convert import converted_model

        graph = converted_model(loaded)
    precision = runtime.int8_float_precision(graph.report) if kind == "int8" else loaded.backend.precision
    loaded.session = runtime.open_session(graph.path, thread_count(), precision, parallel_batches())
    return graph


def _load_torch(loaded: LoadedModel, ref: str, device: str) -> None:
    import transformers

    from nlpkit.models.cls_only import first_token_only_where_possible

    apply_to_torch()
    chosen = pick_device(device)
    dtype = loaded.backend.torch_dtype or "float32"  # bf16 weights: no per-call casts (attention is sdpa already)
    try:
        with quiet_loading():
            model = getattr(transformers, loaded.model_class).from_pretrained(loaded.path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load model '{ref}' from {loaded.path}: {exc}") from exc
    loaded.first_token_only = first_token_only_where_possible(model)
    model = model.eval().to(chosen)
    if loaded.backend.compiled:
        import torch

        # Compiled on the first batch, for any batch size and length (dynamic shapes), so the
        # length-sorted batches of a stream do not each compile again.
        model = torch.compile(model, dynamic=True)
    loaded.model = model
    loaded.device = str(chosen)
