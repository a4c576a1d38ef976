"""Scoring a model against gold data: the same engine that serves predictions, then the
task's own metrics. Used by ``nlpkit evaluate`` and by the trainer after every epoch."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from nlpkit.inference.engine import Engine
from nlpkit.store import Database
from nlpkit.tasks.base import Example, Task


def evaluate(
    task: Task, examples: Sequence[Example], *, batch_size: int = 64, show_progress: bool = True
) -> dict[str, float]:
    """The task's metrics for its predictions on ``examples`` (first key: the headline metric)."""
    with tqdm(total=len(examples), desc="evaluating", unit="ex", leave=False, disable=not show_progress) as bar:
        predictions = Engine(task, batch_size=batch_size).predict([e.record for e in examples], progress=bar.update)
    return task.score(predictions, examples)


def evaluate_and_record(
    database: Database, task: Task, examples: Sequence[Example], *, data: str, batch_size: int = 64
) -> dict[str, float]:
    """Evaluate, and keep the run (model, revision, data, settings, metrics) in the database."""
    loaded = task.model
    params = {"data": data, "revision": loaded.revision, "backend": loaded.backend.name, "settings": task.settings}
    with database.runs.recorded(
        kind="evaluate", task=task.name, model_name=loaded.name, base_model=None, params=params
    ) as run_id:
        metrics = evaluate(task, examples, batch_size=batch_size) | {"n": len(examples)}
        database.runs.record_metrics(run_id, [metrics])
    return metrics
