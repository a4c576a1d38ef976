"""``nlpkit split-squad``: a train/eval split of a SQuAD file by article."""

from __future__ import annotations

from pathlib import Path

import click

from nlpkit_plugins.qa.data import split_squad as split


@click.command("split-squad")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--train-articles", type=click.IntRange(min=1), required=True, help="Articles in the training part.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def split_squad(file: Path, train_articles: int, out_dir: Path) -> None:
    """Split a SQuAD JSON file by article (never by question) into FILE.train.json and FILE.eval.json."""
    train, evaluation = split(file, train_articles, out_dir)
    click.echo(f"{train}\n{evaluation}")
