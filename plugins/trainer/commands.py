"""``nlpkit train``: thin CLI over :mod:`nlpkit_plugins.trainer.finetune`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from nlpkit.cli import CliState, pass_state


@click.command()
@click.argument("task")
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Training data (TSV, CSV or JSON lines).",
)
@click.option(
    "--eval-data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Evaluated after every epoch; the best epoch's model is kept.",
)
@click.option("--model", "base_model", required=True, metavar="REF", help="Starting checkpoint (directory or name).")
@click.option("--name", required=True, help="Register the trained model under this name.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help="[NLPKIT_HOME/models/NAME]")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", "learning_rate", default=5e-5, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-examples", type=click.IntRange(min=1), help="Train on a seeded random sample of this size.")
@click.option("--max-length", type=click.IntRange(min=8), help="Truncate training inputs to this many tokens.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="auto = bf16 where the hardware has it natively.",
)
@click.option("--seed", default=42, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@pass_state
def train(state: CliState, task: str, **options: object) -> None:
    """Fine-tune a model for TASK and register it."""
    from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune

    result = fine_tune(FineTuneConfig(task=task, **options), state.database())  # type: ignore[arg-type]
    table = Table("epoch", *[key for key in result.history[0] if key != "epoch"], title=f"trained '{options['name']}'")
    for row in result.history:
        table.add_row(*(f"{value:.4f}" if isinstance(value, float) else str(value) for value in row.values()))
    console = Console(stderr=True)
    console.print(table)
    console.print(f"best checkpoint: {result.model_dir}")
