"""``nlpkit train``: thin CLI over :mod:`nlpkit_plugins.trainer.finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from nlpkit.cli.common import CliState, layer_list, pass_state

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
positive = click.IntRange(min=1)


def loop_options(function: Any) -> Any:
    """The optimisation flags fine-tuning and distillation share."""
    options = [
        click.option("--epochs", default=3, show_default=True, type=positive),
        click.option("--lr", "learning_rate", default=5e-5, show_default=True, type=click.FloatRange(0, min_open=True)),
        click.option("--batch-size", default=32, show_default=True, type=positive, help="Per process."),
        click.option(
            "--grad-accum",
            default=1,
            show_default=True,
            type=positive,
            help="Batches whose gradients add up to one optimizer step.",
        ),  # fmt: skip
        click.option("--warmup-ratio", default=0.06, show_default=True, type=click.FloatRange(0, 1)),
        click.option("--weight-decay", default=0.01, show_default=True, type=click.FloatRange(0)),
        click.option(
            "--max-grad-norm",
            default=1.0,
            show_default=True,
            type=click.FloatRange(0),
            help="Clip gradients to this norm (0: no clipping).",
        ),  # fmt: skip
        click.option("--eval-steps", type=positive, help="Evaluate, save resumable state every N steps [each epoch]."),
        click.option("--metric", help="Metric that picks the best checkpoint [the task's first]."),
        click.option("--patience", type=positive, help="Stop after this many evaluations without improvement."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last saved state."),
        click.option("--seed", default=42, show_default=True),
        click.option(
            "--precision",
            type=click.Choice(["auto", "bf16", "fp32"]),
            default="auto",
            show_default=True,
            help="auto = bf16 where the hardware has it natively.",
        ),  # fmt: skip
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help="[NLPKIT_HOME/models/..]"),
        click.option("--max-length", type=click.IntRange(min=8), help="Truncate training inputs to this many tokens."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command()
@click.argument("task")
@click.option("--data", type=existing_file, required=True, help="Training data in a format the task reads.")
@click.option("--eval-data", type=existing_file, help="Evaluated during training; the best model is kept.")
@click.option("--model", "base_model", required=True, metavar="REF", help="Starting checkpoint (directory or name).")
@click.option("--name", required=True, help="Register the trained model under this name.")
@click.option("--max-examples", type=positive, help="Train on a seeded random sample of this size.")
@click.option("--freeze-layers", default=0, type=click.IntRange(min=0), help="Keep embeddings + N lowest layers [0].")
@loop_options
@pass_state
def train(state: CliState, task: str, **options: Any) -> None:
    """Fine-tune a model for TASK and register it.

    Runs on one CPU or GPU as it is; for several GPUs or machines start it with
    `accelerate launch -m nlpkit train ...`.
    """
    from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune

    options["max_grad_norm"] = options["max_grad_norm"] or None
    result = fine_tune(FineTuneConfig(task=task, **options), state.database())
    if result.run_id is not None:  # the main process; others under `accelerate launch` stay quiet
        print_history(result.history, f"trained '{options['name']}'")
        Console(stderr=True).print(f"best model: {result.model_dir}")


def print_history(history: list[dict[str, Any]], title: str) -> None:
    if not history:
        return
    table = Table(*history[0], title=title)
    for row in history:
        table.add_row(*(f"{value:.4f}" if isinstance(value, float) else str(value) for value in row.values()))
    Console(stderr=True).print(table)


@click.command()
@click.option("--teacher", required=True, metavar="REF", help="Teacher model (directory or registered name).")
@click.option("--task", help="Task-specific distillation for this task; without it, general (masked-LM) distillation.")
@click.option("--student-layers", callback=layer_list, metavar="0,2,4", help="Student = these teacher layers.")
@click.option("--student", metavar="REF", help="Student = this checkpoint (same vocabulary and width as the teacher).")
@click.option(
    "--data",
    type=existing_file,
    required=True,
    help="Unlabelled text, one document per line (general), or the task's training data.",
)
@click.option("--eval-data", type=existing_file, help="Task-specific: scored during training; the best is kept.")
@click.option("--name", required=True, help="Register the student under this name.")
@click.option("--max-examples", type=positive, help="Use a seeded random sample of this many sequences/examples.")
@click.option("--alpha-ce", type=click.FloatRange(0), help="Soft-target KL weight [5.0 general, 0.5 task-specific].")
@click.option(
    "--alpha-mlm", default=2.0, show_default=True, type=click.FloatRange(0), help="General: masked-LM weight."
)
@click.option(
    "--alpha-cos",
    type=click.FloatRange(0),
    help="Cosine weight between student and teacher last hidden states [1.0 general, 0 task-specific].",
)
@click.option("--alpha-task", default=0.5, show_default=True, type=click.FloatRange(0), help="Task: gold-label weight.")
@click.option("--temperature", default=2.0, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option(
    "--head-steps",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="General: steps to fit a masked-LM head for a teacher that has none.",
)
@loop_options
@pass_state
def distill(state: CliState, **options: Any) -> None:
    """Distill a smaller student from a teacher, DistilBERT's way, and register it."""
    from nlpkit_plugins.trainer.distill import DistillConfig, distill

    options["max_grad_norm"] = options["max_grad_norm"] or None
    result = distill(DistillConfig(**options), state.database())
    if result.run_id is not None:
        print_history(result.history, f"distilled '{options['name']}'")
        Console(stderr=True).print(f"best student: {result.model_dir}")
