"""Finding, loading and running models: references, revisions, devices, backends, threads.

A model reference is, in the order tried: a local directory, a name registered in the
database (``nlpkit models list``), or a Hugging Face hub id. The hub is only a last
resort: these machines are offline, so a hub id that is not already in the local
cache fails with a message saying how to get a model instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from nlpkit.backends import DEFAULT_MIN_AGREEMENT, Backend, get_backend
from nlpkit.errors import ModelNotFoundError, NlpkitError

log = logging.getLogger(__name__)

METADATA_FILE = "nlpkit.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Maps a registered model name to its directory; the CLI passes one backed by the database.
ModelLookup = Callable[[str], "Path | None"]


@dataclass
class LoadedModel:
    """A model ready for inference, with what is needed to record where a prediction came from."""

    name: str
    revision: str
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    backend: Backend
    device: torch.device
    metadata: dict[str, Any] = field(default_factory=dict)  # the model directory's nlpkit.json
    session: Any = None  # the ONNX Runtime session of an onnx/int8 backend

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor output of one padded batch, as float32 arrays, whatever the backend."""
        if self.session is not None:
            from nlpkit.onnxrt import run_session

            return run_session(self.session, input_ids, attention_mask)
        with torch.inference_mode(), self.backend.autocast(self.device):
            output = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
            )
        return {key: value.float().cpu().numpy() for key, value in output.items() if isinstance(value, torch.Tensor)}


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup v2/v1 CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, quota)) if quota else count


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs a container's quota allows (cgroup v2 ``cpu.max``, else v1 CFS files), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0:
            return max(1, quota_us // period_us)
    except (OSError, ValueError):
        pass
    return None


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads``, ``NLPKIT_THREADS`` or the usable CPUs."""
    chosen = threads or int(os.environ.get("NLPKIT_THREADS", "0") or 0) or available_cpus()
    torch.set_num_threads(chosen)
    return chosen


def native_bf16(device: str = "auto") -> bool:
    """Whether bf16 runs natively: on CPUs with AVX512-BF16 or AMX, on GPUs that support it.

    Without hardware support torch emulates bf16 matmuls, which is slower than fp32.
    """
    chosen = pick_device(device)
    if chosen.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_model_path(ref: str, lookup: ModelLookup | None = None) -> tuple[str, Path]:
    """Turn a model reference into (display name, local directory), or explain what to do."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{ref}' is a directory but holds no config.json: not a model directory")
        return str(path), path.resolve()
    if lookup is not None:
        registered = lookup(ref)
        if registered is not None:
            if not registered.is_dir():
                raise ModelNotFoundError(
                    f"model '{ref}' is registered at {registered}, but that directory is gone; "
                    f"remove the entry with `nlpkit models remove {ref}` or restore the files"
                )
            return ref, registered
    return ref, _from_hub_cache(ref)


def _from_hub_cache(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref))
    except Exception as exc:  # the hub client raises many types for offline, missing and bad ids
        raise ModelNotFoundError(
            f"model '{ref}' is not a local directory, not a registered model, and could not be fetched "
            f"from the Hugging Face hub ({type(exc).__name__}); this machine may be offline. "
            "See `nlpkit models list`, or make one: `nlpkit models convert SRC DEST` then "
            "`nlpkit train TASK --model DEST ...`"
        ) from exc


def model_revision(path: Path) -> str:
    """A short content hash of the weights; saved models cache it in their metadata file."""
    metadata = read_metadata(path)
    if "revision" in metadata:
        return str(metadata["revision"])
    return weights_digest(path)


def weights_digest(path: Path) -> str:
    for name in WEIGHT_FILES:
        weights = path / name
        if weights.is_file():
            digest = hashlib.sha256()
            with weights.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
            return digest.hexdigest()[:12]
    raise ModelNotFoundError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES)})")


def read_metadata(path: Path) -> dict[str, Any]:
    file = path / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def write_metadata(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the model directory's nlpkit.json, recomputing the revision."""
    metadata = read_metadata(path) | fields
    metadata["revision"] = weights_digest(path)
    (path / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


def max_input_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model accepts: position table size, capped by a sane tokenizer limit.

    Tokenizer configs often carry a placeholder (1e30) or a limit they do not apply,
    so the position table is the authority and nlpkit always truncates explicitly.
    """
    positions = int(getattr(model.config, "max_position_embeddings", 512))
    tokenizer_limit = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return min(positions, tokenizer_limit) if tokenizer_limit < 1_000_000 else positions


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

    The ONNX backends also open their session here; ``int8`` refuses a quantized model
    whose agreement with fp32, measured when it was made, is below ``min_agreement``.
    """
    name, path = resolve_model_path(ref, lookup)
    chosen_device = pick_device(device)
    chosen_backend = get_backend(backend)
    revision = model_revision(path)
    onnx_file = _cached_onnx(name, path, revision, chosen_backend, chosen_device, min_agreement)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with quiet_loading():
            model = (
                _skeleton(model_class, path) if onnx_file else getattr(transformers, model_class).from_pretrained(path)
            )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load model '{ref}' from {path}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelNotFoundError(f"model '{ref}' has no fast tokenizer (tokenizer.json); nlpkit needs one")
    loaded = LoadedModel(
        name=name,
        revision=revision,
        path=path,
        model=model if onnx_file else model.eval().to(chosen_device),
        tokenizer=tokenizer,
        max_length=max_input_length(model, tokenizer),
        backend=chosen_backend,
        device=chosen_device,
        metadata=read_metadata(path),
    )
    if chosen_backend.onnx_file is not None:
        from nlpkit import onnxrt

        loaded.session = onnxrt.open_session(onnx_file or onnxrt.exported_model(loaded), torch.get_num_threads())
    return loaded


def _cached_onnx(
    name: str, path: Path, revision: str, backend: Backend, device: torch.device, min_agreement: float
) -> Path | None:
    """The ONNX file an onnx/int8 backend will run, if already made (None: torch, or not exported yet)."""
    if backend.onnx_file is None:
        return None
    if device.type != "cpu":
        raise NlpkitError(f"the {backend.name} backend runs on CPU; on {device} use torch or bf16")
    from nlpkit import onnxrt

    return onnxrt.cached_model(name, path, revision, backend.onnx_file, min_agreement)


def _skeleton(model_class: str, path: Path) -> PreTrainedModel:
    """The model's structure and config without its weights (on the meta device): all an ONNX
    backend needs from torch, and it saves the seconds and the memory of loading weights twice."""
    config = transformers.AutoConfig.from_pretrained(path)
    head = getattr(transformers, model_class)
    with torch.device("meta"):  # an Auto class builds through from_config, a concrete one directly
        return head.from_config(config) if hasattr(head, "from_config") else head(config)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide what transformers prints on every load and save: progress bars even for one-file
    models, and load reports about heads that are new on purpose (fine-tuning adds them)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()
