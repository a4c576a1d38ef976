"""One obvious call per task: ``nlpkit.pipelines.pipeline("sentiment")("What a film!")``.

This is the Python face of ``nlpkit predict``: resolve the model (a directory, a
registered name, or the newest model registered for the task), load it for the
task, and run inputs through the engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nlpkit import settings
from nlpkit.errors import DatabaseNotReadyError, InvalidRecordError, ModelNotFoundError
from nlpkit.inference.engine import DEFAULT_BATCH_SIZE, Engine
from nlpkit.inference.loading import load_model
from nlpkit.plugins import get_task_class
from nlpkit.store import Database
from nlpkit.tasks.base import Record, Task


class ModelRegistry:
    """Registered models in a database, opened only if a reference needs it."""

    def __init__(self, database: Database | None = None) -> None:
        self._database = database

    @property
    def database(self) -> Database:
        if self._database is None:
            self._database = Database(settings.get("database_url"))
        return self._database

    def path(self, name: str) -> Path | None:
        """A model directory by registered name; None when unknown or when no schema exists yet."""
        try:
            self.database.check_schema()
        except DatabaseNotReadyError:
            return None
        return self.database.models.path(name)

    def newest_for(self, task: str) -> str:
        self.database.check_schema()
        entries = self.database.models.list(task)
        if not entries:
            raise ModelNotFoundError(
                f"no model is registered for task '{task}': pass --model DIR, or train one with "
                f"`nlpkit train {task} --data FILE --model BASE --name NAME`"
            )
        return entries[0].name


def load_task(
    task: str,
    model: str | None = None,
    *,
    backend: str = "torch",
    device: str = "auto",
    registry: ModelRegistry | None = None,
    **options: Any,
) -> Task:
    """The named task with its model loaded and ready for an Engine; ``options`` are the task's settings."""
    task_class = get_task_class(task)
    registry = registry or ModelRegistry()
    ref = model or registry.newest_for(task)
    loaded = load_model(
        ref,
        task_class.model_class,
        backend=backend,
        device=device,
        lookup=registry.path,
        min_agreement=settings.get_fraction("min_agreement"),
    )
    return task_class(loaded, **options)


class Pipeline:
    """Callable on a text, a record mapping, or a list of either; returns output dicts."""

    def __init__(self, task: Task, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.task = task
        self.engine = Engine(task, batch_size=batch_size)

    def __call__(self, inputs: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]]) -> Any:
        single = isinstance(inputs, (str, Mapping))
        items = [inputs] if single else list(inputs)
        records = [self._record(item) for item in items]
        outputs = [prediction.output for prediction in self.engine.predict(records)]
        return outputs[0] if single else outputs

    def stream(
        self, items: Iterable[str | Mapping[str, Any]], chunk: int = 512
    ) -> Iterator[dict[str, Any] | InvalidRecordError]:
        """Outputs in input order for an input stream of any length, ``chunk`` items at a time.

        An invalid item yields its :class:`InvalidRecordError` in its place instead of
        stopping the stream, so output lines stay aligned with input lines.
        """
        iterator = iter(items)
        while block := list(itertools.islice(iterator, chunk)):
            checked: list[Record | InvalidRecordError] = []
            for item in block:
                try:
                    checked.append(self._record(item))
                except InvalidRecordError as exc:
                    checked.append(exc)
            predictions = iter(self.engine.predict([item for item in checked if isinstance(item, Record)]))
            for item in checked:
                yield item if isinstance(item, InvalidRecordError) else next(predictions).output

    def _record(self, item: str | Mapping[str, Any]) -> Record:
        fields = {"text": item} if isinstance(item, str) else dict(item)
        return Record(self.task.validate(fields), fields.get("id"))


def pipeline(task: str, model: str | None = None, **options: Any) -> Pipeline:
    """Load ``task`` with ``model`` (default: the newest registered for it) as a callable.

    Keyword arguments are ``load_task``'s (``backend``, ``device``) and the task's own
    options, e.g. ``pipeline("ner", aggregation="first", stride=64)``.
    """
    batch_size = options.pop("batch_size", DEFAULT_BATCH_SIZE)
    return Pipeline(load_task(task, model, **options), batch_size=batch_size)
