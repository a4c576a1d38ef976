"""Models that travel: one self-describing archive per model (``nlpkit models export`` / ``import``).

An archive is a gzipped tar holding one folder, the model directory as it is on disk (weights,
tokenizer, config with its labels, nlpkit.json with thresholds, and whatever the backends made
beside them: model.onnx, the int8 and OpenVINO files), plus two files written at export:

* ``nlpkit-model.json``: what the registry knows (name, task, revision, base model, metrics), the
  parameters of the run that trained it, and a SHA-256 of every file, checked on import;
* ``README.md``: a model card in the Hugging Face format (YAML metadata, then prose), so the folder
  reads as a model repository and loads with ``transformers`` as it is.

Import unpacks into the models directory under the model's name and registers it there, so its
location is stored relative to that directory and resolves wherever the directory is mounted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nlpkit.errors import NlpkitError
from nlpkit.models.files import file_sha256, id2label, read_config, read_metadata, weights_digest

MANIFEST_FILE = "nlpkit-model.json"
CARD_FILE = "README.md"
ARCHIVE_FORMAT = "nlpkit-model-archive"
ARCHIVE_VERSION = 1

# The Hugging Face pipeline each head serves, from the architecture in config.json.
_PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
}


@dataclass(frozen=True)
class ModelDescription:
    """What an archive says about its model: the registry's fields and the training run's parameters."""

    name: str
    task: str
    revision: str
    base_model: str | None = None
    metrics: dict[str, Any] | None = None
    training_run: dict[str, Any] | None = None


def export_model(model_dir: Path, description: ModelDescription, destination: Path) -> Path:
    """Write ``model_dir`` and its description to the archive ``destination``; return it."""
    if weights_digest(model_dir) != description.revision:
        raise NlpkitError(
            f"the weights in {model_dir} are not revision {description.revision} that the registry recorded "
            "for this model; register it again before exporting"
        )
    files = sorted(
        path for path in model_dir.rglob("*") if path.is_file() and path.name not in (MANIFEST_FILE, CARD_FILE)
    )
    card = model_card(model_dir, description)
    manifest = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {
            "name": description.name,
            "task": description.task,
            "revision": description.revision,
            "base_model": description.base_model,
            "metrics": description.metrics,
            "labels": [label for _, label in sorted(id2label(read_config(model_dir)).items())],
            "metadata": read_metadata(model_dir),
        },
        "training_run": description.training_run,
        "files": {path.relative_to(model_dir).as_posix(): file_sha256(path) for path in files}
        | {CARD_FILE: hashlib.sha256(card).hexdigest()},
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    # Weights barely compress; a light level keeps export fast while tokenizer and JSON files shrink.
    with tarfile.open(partial, "w:gz", compresslevel=1) as archive:
        root = description.name
        _add_bytes(archive, f"{root}/{MANIFEST_FILE}", json.dumps(manifest, indent=2, default=str).encode() + b"\n")
        _add_bytes(archive, f"{root}/{CARD_FILE}", card)
        for path in files:
            archive.add(path, arcname=f"{root}/{path.relative_to(model_dir).as_posix()}", recursive=False)
    partial.replace(destination)
    return destination


def read_archive(archive_path: Path) -> dict[str, Any]:
    """The manifest of an archive, without unpacking the rest."""
    with _open(archive_path) as archive:
        for member in archive:
            if member.isfile() and member.name.count("/") == 1 and member.name.endswith("/" + MANIFEST_FILE):
                manifest = json.load(archive.extractfile(member))
                break
        else:
            raise NlpkitError(
                f"{archive_path} is not an nlpkit model archive (no {MANIFEST_FILE}); "
                "make one with `nlpkit models export`"
            )
    if manifest.get("format") != ARCHIVE_FORMAT or manifest.get("version") != ARCHIVE_VERSION:
        raise NlpkitError(
            f"{archive_path}: unsupported archive format {manifest.get('format')!r} version {manifest.get('version')!r}"
        )
    return manifest


def install_model(archive_path: Path, target: Path, *, replace: bool = False) -> tuple[dict[str, Any], bool]:
    """Unpack the archive's model into ``target``, every file checked against the manifest.

    Returns the manifest and whether files were written: a ``target`` already holding the same
    revision is left as it is (so an import can be repeated), one holding another revision is
    replaced only with ``replace``. Nothing is left behind if a check fails.
    """
    manifest = read_archive(archive_path)
    revision = manifest["model"]["revision"]
    if target.exists():
        present = _revision_or_none(target)
        if present == revision:
            return manifest, False
        if not replace:
            raise NlpkitError(
                f"{target} already holds another model (revision {present}); pass --replace to overwrite it, "
                "or --name to import under another name"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as staging:
        with _open(archive_path) as archive:
            archive.extractall(staging, members=_plain_members(archive, archive_path))
        roots = list(Path(staging).iterdir())
        if len(roots) != 1 or not roots[0].is_dir():
            raise NlpkitError(f"{archive_path}: an nlpkit model archive holds exactly one folder")
        unpacked = roots[0]
        found = {path.relative_to(unpacked).as_posix() for path in unpacked.rglob("*") if path.is_file()} - {
            MANIFEST_FILE
        }
        expected = manifest["files"]
        if found != set(expected):
            missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
            raise NlpkitError(f"{archive_path}: files differ from its manifest (missing {missing}, unexpected {extra})")
        for name, digest in expected.items():
            if file_sha256(unpacked / name) != digest:
                raise NlpkitError(f"{archive_path}: {name} is damaged (its SHA-256 differs from the manifest)")
        if weights_digest(unpacked) != revision:
            raise NlpkitError(f"{archive_path}: the weights are not revision {revision}")
        for path in [unpacked, *unpacked.rglob("*")]:  # readable by any user, e.g. a container's
            path.chmod(0o755 if path.is_dir() else 0o644)
        if target.exists():
            shutil.rmtree(target)
        unpacked.replace(target)
    return manifest, True


def _revision_or_none(path: Path) -> str | None:
    try:
        return weights_digest(path)
    except NlpkitError:
        return None


def model_card(model_dir: Path, description: ModelDescription) -> bytes:
    """A Hugging Face model card for the model: YAML metadata, then what it is, its labels, how it was
    trained and scored, and how to load it with nlpkit or with transformers."""
    config = read_config(model_dir)
    labels = [label for _, label in sorted(id2label(config).items())]
    architecture = (config.get("architectures") or [""])[0]
    pipeline_tag = next((tag for suffix, tag in _PIPELINE_TAGS.items() if architecture.endswith(suffix)), None)
    metrics = description.metrics or {}
    front_matter: dict[str, Any] = {"library_name": "transformers", "tags": ["nlpkit", description.task]}
    if pipeline_tag:
        front_matter["pipeline_tag"] = pipeline_tag
    if description.base_model and not Path(description.base_model).is_absolute():
        front_matter["base_model"] = description.base_model
    run = description.training_run or {}
    parameters = run.get("params") or {}
    lines = [
        "---",
        yaml.safe_dump(front_matter, sort_keys=False).strip(),
        "---",
        "",
        f"# {description.name}",
        "",
        f"A `{description.task}` model made with nlpkit ({architecture or 'architecture not recorded'}, "
        f"revision `{description.revision}`, the first 12 hex digits of its weights' SHA-256).",
        "",
        "## Labels",
        "",
        ", ".join(f"`{label}`" for label in labels) if labels else "None recorded.",
        "",
        "## Training",
        "",
    ]
    if parameters:
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| {key} | `{json.dumps(value, default=str)}` |" for key, value in sorted(parameters.items())]
    else:
        lines.append("Not trained by nlpkit, or its training run was not recorded.")
    if description.base_model:
        lines += ["", f"Starting point: `{description.base_model}`."]
    lines += ["", "## Evaluation", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in sorted(metrics.items())]
    else:
        lines.append("No metrics recorded.")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"nlpkit models import {description.name}.tar.gz",
        f'nlpkit predict {description.task} --model {description.name} "..."',
        "```",
        "",
        "The unpacked folder is also a Hugging Face model directory:",
        "",
        "```python",
        "from transformers import pipeline",
        f'pipe = pipeline("{pipeline_tag or "feature-extraction"}", model="path/to/{description.name}")',
        "```",
        "",
    ]
    return "\n".join(lines).encode()


def _plain_members(archive: tarfile.TarFile, archive_path: Path) -> list[tarfile.TarInfo]:
    """Every member, once each is known to be a plain file or folder inside the archive's folder.

    What tarfile's "data" filter refuses (absolute paths, "..", links, devices), checked here because
    Python 3.11 before 3.11.4 (Debian 12's) has no filters.
    """
    members = archive.getmembers()
    for member in members:
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise NlpkitError(
                f"{archive_path}: refusing {member.name!r} (not a plain file inside the archive's folder)"
            )
        member.mode = 0o755 if member.isdir() else 0o644
    return members


def _open(archive_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive_path, "r:*")
    except FileNotFoundError as exc:
        raise NlpkitError(f"{archive_path} does not exist") from exc
    except tarfile.TarError as exc:
        raise NlpkitError(f"{archive_path} is not an nlpkit model archive: {exc}") from exc


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    archive.addfile(info, io.BytesIO(data))
