"""``nlpkit tune-thresholds``: per-label thresholds for a multi-label model, stored with it."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from nlpkit import CliState, pass_state


@click.command("tune-thresholds")
@click.option("--model", required=True, metavar="REF", help="Multi-label model directory or registered name.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Development data with gold labels (not the test set).")  # fmt: skip
@pass_state
def tune_thresholds(state: CliState, model: str, data: Path) -> None:
    """Choose each label's threshold for the best F1 on DATA and save them in the model's nlpkit.json."""
    import numpy as np
    from tqdm import tqdm

    from nlpkit import Engine, ModelRegistry, load_task, write_metadata
    from nlpkit_plugins.multilabel.task import MultilabelTask
    from nlpkit_plugins.multilabel.thresholds import tune_thresholds as tune

    examples = MultilabelTask.read_examples(data)
    task = load_task("multilabel", model, registry=ModelRegistry(state.database(check=False)), threshold=0.5)
    with tqdm(total=len(examples), desc="scoring", unit="ex") as bar:
        predictions = Engine(task).predict([example.record for example in examples], progress=bar.update)
    labels = list(task.model.id2label.values())
    scores = np.array([[prediction.output["scores"][label] for label in labels] for prediction in predictions])
    gold = np.array([[label in example.target for label in labels] for example in examples])
    thresholds = dict(zip(labels, (float(t) for t in tune(scores, gold)), strict=True))
    before = MultilabelTask.score(predictions, examples)
    task.thresholds = thresholds
    retuned = [task.decide(p.output["scores"], p.output["truncated"]) for p in predictions]
    after = MultilabelTask.score(retuned, examples)
    write_metadata(task.model.path, thresholds=thresholds)

    table = Table("", "micro F1", "macro F1", title=f"thresholds tuned on {data.name}, saved to {task.model.path}")
    table.add_row("0.5 everywhere", f"{before['micro_f1']:.4f}", f"{before['macro_f1']:.4f}")
    table.add_row("tuned per label", f"{after['micro_f1']:.4f}", f"{after['macro_f1']:.4f}")
    Console(stderr=True).print(table)
