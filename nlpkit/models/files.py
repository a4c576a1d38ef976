"""A model directory on disk: finding it, naming its revision, reading its config and tokenizer.

A model reference is, in the order tried: a local directory, a name registered in the
database (``nlpkit models list``), or a Hugging Face hub id. The hub is only a last
resort: these machines are offline, so a hub id that is not already in the local
cache fails with a message saying how to get a model instead.

Nothing here imports torch. Reading a config through transformers' config classes
would (they pull in torch for their rope helpers), so the config is read as the JSON it
is; the fast tokenizer classes load without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.errors import ModelNotFoundError

METADATA_FILE = "nlpkit.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Maps a registered model name to its directory; the CLI passes one backed by the database.
ModelLookup = Callable[[str], "Path | None"]


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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex, read in 4 MiB chunks (weights can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(path: Path) -> str:
    for name in WEIGHT_FILES:
        weights = path / name
        if weights.is_file():
            return file_sha256(weights)[:12]
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


def read_config(path: Path) -> dict[str, Any]:
    """The model's config.json as a plain mapping."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {path / 'config.json'}: {exc}") from exc


@dataclass(frozen=True)
class ModelShape:
    """An encoder's sizes, from a config under BERT's key names or DistilBERT's."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    max_positions: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ModelShape:
        def first(*keys: str, default: int | None = None) -> int:
            value = next((config[key] for key in keys if config.get(key) is not None), default)
            if value is None:
                raise ModelNotFoundError(f"the model's config has none of {', '.join(keys)}")
            return int(value)

        hidden = first("hidden_size", "dim")
        return cls(
            hidden=hidden,
            layers=first("num_hidden_layers", "n_layers"),
            heads=first("num_attention_heads", "n_heads"),
            ffn=first("intermediate_size", "hidden_dim", default=4 * hidden),
            max_positions=first("max_position_embeddings", default=512),
        )


def id2label(config: Mapping[str, Any]) -> dict[int, str]:
    """Label names by class index; transformers' LABEL_i names when the config has none."""
    names = config.get("id2label")
    if names:
        return {int(index): str(name) for index, name in names.items()}
    return {index: f"LABEL_{index}" for index in range(int(config.get("num_labels", 2)))}


def load_tokenizer(path: Path, ref: str) -> Any:
    """The directory's fast tokenizer, as the class its config names (without importing torch).

    ``AutoTokenizer`` would resolve the same class, but only through transformers' config
    classes, which import torch.
    """
    import transformers

    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not (path / "tokenizer.json").is_file():
        raise ModelNotFoundError(f"model '{ref}' has no fast tokenizer (tokenizer.json); nlpkit needs one")
    fast = transformers.PreTrainedTokenizerFast
    named = str(config.get("tokenizer_class") or "")
    candidates = [getattr(transformers, name, None) for name in (named, named + "Fast") if named]  # 4.x: ...Fast
    tokenizer_class = next((c for c in candidates if isinstance(c, type) and issubclass(c, fast)), fast)
    try:
        return tokenizer_class.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load the tokenizer of model '{ref}' from {path}: {exc}") from exc


def max_input_length(config: Mapping[str, Any], tokenizer: Any) -> int:
    """The longest input the model accepts: position table size, capped by a sane tokenizer limit.

    Tokenizer configs often carry a placeholder (1e30) or a limit they do not apply,
    so the position table is the authority and nlpkit always truncates explicitly.
    """
    positions = ModelShape.of(config).max_positions
    tokenizer_limit = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return min(positions, tokenizer_limit) if tokenizer_limit < 1_000_000 else positions


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide what transformers prints on every load and save: progress bars even for one-file
    models, and load reports about heads that are new on purpose (fine-tuning adds them)."""
    from transformers.utils import logging as hf_logging

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
