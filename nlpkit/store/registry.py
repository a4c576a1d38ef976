"""The model registry: models nlpkit produced or was told about, loadable by name (``database.models``).

A model inside the models directory (``settings.models_dir()``: ``$NLPKIT_MODELS_DIR``, default
``$NLPKIT_HOME/models``) is stored relative to it and found, when read, under the models directory
in effect then: a container that mounts that directory elsewhere and sets NLPKIT_MODELS_DIR loads
a model by the name registered on the host. A model kept anywhere else is stored by its absolute path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nlpkit import settings
from nlpkit.store.tables import ModelRow, utcnow
from nlpkit.store.writes import upsert

Sessions = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model as the rest of nlpkit sees it (detached from any session)."""

    name: str
    task: str
    path: Path  # absolute: a location stored relative to the models directory is resolved against it
    revision: str
    base_model: str | None
    metrics: dict[str, Any] | None
    created_at: dt.datetime
    training_run_id: int | None = None  # the run that produced it; None for converted or copied models

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: paths and times as strings."""
        return {
            "name": self.name,
            "task": self.task,
            "path": str(self.path),
            "revision": self.revision,
            "base_model": self.base_model,
            "metrics": self.metrics,
            "created_at": self.created_at.isoformat(),
            "training_run_id": self.training_run_id,
        }


class RegisteredModels:
    """Register, find, list and forget models by name, in one database."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def register(
        self,
        *,
        name: str,
        task: str,
        path: Path,
        revision: str,
        base_model: str | None = None,
        metrics: dict[str, Any] | None = None,
        training_run_id: int | None = None,
    ) -> None:
        """Record a model under ``name``; registering a name again points it at the new files."""
        row = {
            "name": name,
            "task": task,
            "path": _stored_path(Path(path)),
            "revision": revision,
            "base_model": base_model,
            "metrics": metrics,
            "training_run_id": training_run_id,
            "created_at": utcnow(),
        }
        with self._sessions() as session:
            upsert(session, ModelRow, [row], ("name",))

    def find(self, name: str) -> ModelEntry | None:
        with self._sessions() as session:
            row = session.scalar(select(ModelRow).where(ModelRow.name == name))
            return _entry(row) if row else None

    def list(self, task: str | None = None) -> list[ModelEntry]:  # noqa: A003 - database.models.list(), as a registry reads
        """Registered models, newest first."""
        query = select(ModelRow).order_by(ModelRow.created_at.desc(), ModelRow.id.desc())
        if task:
            query = query.where(ModelRow.task == task)
        with self._sessions() as session:
            return [_entry(row) for row in session.scalars(query)]

    def remove(self, name: str) -> bool:
        """Forget a registered model; False when no model has that name."""
        with self._sessions() as session:
            row = session.scalar(select(ModelRow).where(ModelRow.name == name))
            if row is None:
                return False
            session.delete(row)
            return True

    def path(self, name: str) -> Path | None:
        """A ``ModelLookup`` for :func:`nlpkit.inference.loading.load_model`."""
        entry = self.find(name)
        return entry.path if entry else None


def _stored_path(path: Path) -> str:
    """How the registry records a model's location: relative to the models directory (POSIX form)
    when the model lies inside it, else absolute."""
    resolved = path.resolve()
    models = settings.models_dir().resolve()
    if resolved != models and resolved.is_relative_to(models):
        return resolved.relative_to(models).as_posix()
    return str(resolved)


def _located(stored: str) -> Path:
    """The absolute location of a stored path: a relative one lies in the current models directory."""
    path = Path(stored)
    return path if path.is_absolute() else (settings.models_dir() / path).resolve()


def _entry(row: ModelRow) -> ModelEntry:
    return ModelEntry(
        name=row.name,
        task=row.task,
        path=_located(row.path),
        revision=row.revision,
        base_model=row.base_model,
        metrics=row.metrics,
        created_at=row.created_at,
        training_run_id=row.training_run_id,
    )
