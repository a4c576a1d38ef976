"""``nlpkit langid ...``: the commands this plugin adds through the ``register_commands`` hook.

Thin on purpose: parse the options, call :mod:`nlpkit_langid.build`, say what happened.
Messages go to stderr, so stdout stays free for anything a script might pipe.
"""

from __future__ import annotations

from pathlib import Path

import click
from nlpkit import CliState, pass_state


@click.group()
def langid() -> None:
    """Language identification (the nlpkit-langid plugin)."""


@langid.command("build-model")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, help="Same seed, same model (on the same torch version).")
@click.option(
    "--register", "name", metavar="NAME", help="Also register it as NAME (then `predict langid` needs no --model)."
)
@pass_state
def build_model_command(state: CliState, dest: Path, epochs: int, seed: int, name: str | None) -> None:
    """Train a small language-identification model on the built-in sentences and save it to DEST.

    It learns English, French, German and Spanish in seconds on a CPU, with
    nothing downloaded. Use it with `nlpkit predict langid --model DEST TEXT`.
    """
    from nlpkit import model_revision

    from nlpkit_langid.build import build_model

    report = build_model(dest, epochs=epochs, seed=seed)
    click.echo(
        f"saved a model for {', '.join(report.languages)} to {dest}: accuracy "
        f"{report.held_out_accuracy:.3f} on {report.held_out_count} held-out sentences",
        err=True,
    )
    if name:
        state.database().models.register(
            name=name,
            task="langid",
            path=dest,
            revision=model_revision(dest),
            metrics={"held_out_accuracy": report.held_out_accuracy},
        )
        click.echo(f"registered it as '{name}'", err=True)
