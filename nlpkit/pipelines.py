"""One obvious call per task: ``nlpkit.pipelines.pipeline("sentiment")("What a film!")``.

This is the Python face of ``nlpkit predict``: resolve the model (a directory, a
registered name, or the newest model registered for the task), load it for the
task on a backend (``"auto"``: the one :func:`auto_backend` chooses for the model on
this machine), and run inputs through the engine.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from nlpkit import settings
from nlpkit.errors import DatabaseNotReadyError, InvalidRecordError, ModelNotFoundError, NlpkitError
from nlpkit.inference import tuning
from nlpkit.inference.engine import DEFAULT_BATCH_SIZE, Engine
from nlpkit.inference.loading import load_model
from nlpkit.models.files import model_revision, resolve_model_path
from nlpkit.plugins import get_task_class
from nlpkit.store import Database
from nlpkit.system.hardware import gpus
from nlpkit.system.threads import thread_count
from nlpkit.tasks.base import Record, Task

logger = logging.getLogger(__name__)


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

    def training_data(self, path: Path) -> list[Path]:
        """The files the model registered at ``path`` was evaluated and trained on (evaluation data first),
        as its training run recorded them, that exist here; none for a model nlpkit did not train here."""
        try:
            self.database.check_schema()
            entry = next((entry for entry in self.database.models.list() if entry.path == path), None)
            run = self.database.runs.find(entry.training_run_id) if entry and entry.training_run_id else None
        except (NlpkitError, SQLAlchemyError) as exc:  # no registry to ask (a model given by its directory)
            logger.debug("no training data from the registry: %s", exc)
            return []
        files = [Path(run.params[key]) for key in ("eval_data", "data") if run and run.params.get(key)]
        return [file for file in files if file.is_file()]


def auto_backend(
    task: str,
    ref: str,
    *,
    device: str = "auto",
    registry: ModelRegistry | None = None,
    data: Path | None = None,
) -> str:
    """The backend ``--backend auto`` loads model ``ref`` on here (see :mod:`nlpkit.inference.tuning`).

    1. The choice recorded for the model's weights and this machine's fingerprint, if there is one.
    2. Else, on first use, a tuning now on ``data`` (a labelled file the command has at hand, such as
       ``evaluate``'s), or else, for a model given by its registered name, on the evaluation data or data
       its training run recorded: a short one (a sample of 200 records, each backend timed once), run as
       ``nlpkit models tune --if-missing`` in a child process, since loading torch for the reference
       answers would keep some 530 MB in this one for good, and recorded like any other. One line says
       what it chose and why.
    3. Else fp32 ``onnx`` (``torch`` where a GPU is in use): the same answers as torch, and faster in every
       run of docs/PERFORMANCE.md; one line says so, and that ``nlpkit models tune`` would measure. Not recorded.
    """
    registry = registry or ModelRegistry()
    name, path = resolve_model_path(ref, registry.path)
    revision = model_revision(path)
    min_agreement = settings.get_fraction("min_agreement")
    found = tuning.recorded(path, revision, device)
    if found is not None and (chosen := found.choice(min_agreement)):
        logger.info("backend auto for '%s': %s, recorded %s", name, found.summary(chosen), found.tuned_at)
        return chosen
    if found is not None:  # recorded, but the minimum agreement has since been raised above every backend measured
        sources, why = [], f"none of its recorded backends reaches the minimum agreement {min_agreement:.2%}"
    else:
        # A model given by its directory is not looked up in the registry: a worker run with --no-store
        # touches no database, and a directory says nothing of the run that made it.
        by_name = not Path(ref).expanduser().is_dir()
        sources = [data] if data is not None else registry.training_data(path) if by_name else []
        why = "it has no recorded training run whose data is here"
    for source in sources[:1]:
        logger.info("backend auto for '%s': no choice recorded for this machine; tuning on %s", name, source)
        failure = _tune_in_child(task, path, source, device, min_agreement)
        found = tuning.recorded(path, revision, device)
        if failure is None and found is not None and (chosen := found.choice(min_agreement)):
            logger.warning("backend auto for '%s': %s (first use here: tuned in %.0f s, recorded in %s)",
                           name, found.summary(chosen), found.seconds, tuning.record_file(path, revision))  # fmt: skip
            return chosen
        why = f"tuning on {source} failed: {failure or 'no choice recorded'}"
    fallback = "torch" if device not in ("auto", "cpu") or gpus() else "onnx"
    logger.warning(
        "backend auto for '%s': no usable choice recorded for this machine (%s) and %s; using %s. "
        "`nlpkit models tune %s --task %s --data FILE` would measure the backends here and record the fastest",
        name, tuning.machine_key(device), why, fallback, ref, task,
    )  # fmt: skip
    return fallback


def _tune_in_child(task: str, path: Path, data: Path, device: str, min_agreement: float) -> str | None:
    """``nlpkit models tune --if-missing`` in a child process (a worker started beside this one may be tuning
    already: it waits, then finds its record). Returns None on success, else the child's error line."""
    command = [sys.executable, "-m", "nlpkit", "models", "tune", str(path), "--task", task, "--data", str(data),
               "--limit", str(tuning.FIRST_USE_RECORDS), "--device", device, "--min-agreement", str(min_agreement),
               "--if-missing"]  # fmt: skip
    environment = os.environ | {"NLPKIT_THREADS": str(thread_count())}  # the fingerprint's thread count
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]


def load_task(
    task: str,
    model: str | None = None,
    *,
    backend: str = "torch",
    device: str = "auto",
    registry: ModelRegistry | None = None,
    tuning_data: Path | None = None,
    **options: Any,
) -> Task:
    """The named task with its model loaded and ready for an Engine; ``options`` are the task's settings.

    ``backend="auto"`` loads it on the backend :func:`auto_backend` chooses, which on first use may tune
    on ``tuning_data`` (a labelled file the task reads).
    """
    task_class = get_task_class(task)
    registry = registry or ModelRegistry()
    ref = model or registry.newest_for(task)
    if backend == tuning.AUTO:
        backend = auto_backend(task, ref, device=device, registry=registry, data=tuning_data)
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

    Keyword arguments are ``load_task``'s (``backend``, ``"auto"`` included, ``device``) and the task's own
    options, e.g. ``pipeline("ner", aggregation="first", stride=64)``.
    """
    batch_size = options.pop("batch_size", DEFAULT_BATCH_SIZE)
    return Pipeline(load_task(task, model, **options), batch_size=batch_size)
