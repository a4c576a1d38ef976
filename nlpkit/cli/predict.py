"""``nlpkit predict TASK`` (one subcommand per registered task) and ``nlpkit evaluate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from nlpkit.cli.common import (
    BACKEND_OPTION,
    DATABASE_URL_OPTION,
    CliState,
    NlpkitGroup,
    key_values,
    options_by_task,
    pass_state,
)
from nlpkit.errors import NlpkitError

stderr = Console(stderr=True)


class TaskCommands(NlpkitGroup):
    """``nlpkit predict TASK``: one subcommand per registered task."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from nlpkit.plugins import task_classes

        return sorted(task_classes())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from nlpkit.plugins import get_task_class

        return _predict_command(get_task_class(name))


@click.group(cls=TaskCommands)
def predict() -> None:
    """Run a task on texts given as arguments, or on lines of a file or stdin.

    Input lines are JSON objects ({"text": ...}) or plain text; output is one JSON
    object per input line, in order.
    """


def _predict_command(task_class: type) -> click.Command:
    @pass_state
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
        click.Option(["--database-url"], **DATABASE_URL_OPTION),
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


@click.command()
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
    options = task_class.evaluation_options | options_by_task([task], task_options)[task]
    database = state.database()
    registry = ModelRegistry(database)
    loaded = load_task(task, model, backend=backend, device=device, registry=registry, tuning_data=data, **options)
    examples = task_class.read_examples(data)
    scores = evaluate_and_record(database, loaded, examples, data=str(data), batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(scores))
        return
    table = Table("metric", "value", title=f"{task} · {loaded.model.name} · {data.name}")
    for name, value in scores.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


COMMANDS = (
    predict,
    evaluate,
)
