"""Training, distillation and evaluation runs as they happen (``database.runs``): what was asked, what
each evaluation measured, how the run ended, and where its process ran, so that a run killed outright
can be told from one still going."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import select, update

from nlpkit.store.registry import Sessions
from nlpkit.store.tables import TrainingRunRow, as_utc, utcnow
from nlpkit.system.termination import sigterm_interrupts


@dataclass(frozen=True)
class RunEntry:
    """One training, distillation or evaluation run as recorded: what was asked (params), what each
    evaluation measured (metrics, in order), how it ended, how long it took, and where it ran."""

    id: int
    kind: str
    task: str
    model_name: str | None
    base_model: str | None
    params: dict[str, Any]
    metrics: list[Any]
    status: str
    error: str | None
    started_at: dt.datetime
    duration_s: float | None
    host: str | None
    pid: int | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": self.started_at.isoformat()}


class RunLog:
    """The runs recorded in one database."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    @contextmanager
    def recorded(
        self, *, kind: str, task: str, model_name: str | None, base_model: str | None, params: dict[str, Any]
    ) -> Iterator[int]:
        """A run row for the duration of a block: succeeded, failed (with the error) or
        interrupted (Ctrl-C, or SIGTERM: see :mod:`nlpkit.system.termination`)."""
        run_id = self.start(kind=kind, task=task, model_name=model_name, base_model=base_model, params=params)
        try:
            with sigterm_interrupts():
                yield run_id
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.finish(run_id, status, error=f"{type(exc).__name__}: {exc}")
            raise
        self.finish(run_id, "succeeded")

    def start(
        self, *, kind: str, task: str, model_name: str | None, base_model: str | None, params: dict[str, Any]
    ) -> int:
        with self._sessions() as session:
            run = TrainingRunRow(
                kind=kind,
                task=task,
                model_name=model_name,
                base_model=base_model,
                params=params,
                metrics=[],
                status="running",
                started_at=utcnow(),
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            session.add(run)
            session.flush()
            return run.id

    def find(self, run_id: int) -> RunEntry | None:
        with self._sessions() as session:
            row = session.get(TrainingRunRow, run_id)
            return _run_entry(row) if row else None

    def list(self, *, model_name: str | None = None, limit: int | None = None) -> list[RunEntry]:  # noqa: A003 - database.runs.list()
        """Recorded runs, newest first; only those for ``model_name`` when given."""
        query = select(TrainingRunRow).order_by(TrainingRunRow.id.desc()).limit(limit)
        if model_name:
            query = query.where(TrainingRunRow.model_name == model_name)
        with self._sessions() as session:
            return [_run_entry(row) for row in session.scalars(query)]

    def record_metrics(self, run_id: int, metrics: list[dict[str, Any]]) -> None:
        with self._sessions() as session:
            session.get_one(TrainingRunRow, run_id).metrics = list(metrics)

    def mark_lost(self) -> list[int]:
        """Mark "lost" every run recorded as running on this host whose process is gone, and
        return their ids. Ctrl-C and SIGTERM are recorded by the run itself; SIGKILL, the OOM
        killer or a crash of the interpreter leave no chance to, and without this the run
        would read "running" forever. Runs on other hosts are left as they are: their
        processes cannot be seen from here."""
        host = socket.gethostname()
        query = select(TrainingRunRow.id, TrainingRunRow.pid).where(
            TrainingRunRow.status == "running", TrainingRunRow.host == host
        )
        lost = []
        with self._sessions() as session:
            gone = [(run_id, pid) for run_id, pid in session.execute(query) if not _process_exists(pid)]
            for run_id, pid in gone:
                # Only while still "running": a run that recorded its outcome just before exiting keeps it.
                marked = session.execute(
                    update(TrainingRunRow)
                    .where(TrainingRunRow.id == run_id, TrainingRunRow.status == "running")
                    .values(status="lost", error=f"process {pid} on {host} ended without recording an outcome")
                )
                if marked.rowcount:
                    lost.append(run_id)
        return lost

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        with self._sessions() as session:
            run = session.get_one(TrainingRunRow, run_id)
            run.status = status
            run.error = error
            run.finished_at = utcnow()
            run.duration_s = (run.finished_at - as_utc(run.started_at)).total_seconds()


def _run_entry(row: TrainingRunRow) -> RunEntry:
    """The row's columns of the same names; times in UTC whatever the database hands back."""
    columns = {column.name: getattr(row, column.name) for column in fields(RunEntry)}
    return RunEntry(**columns | {"started_at": as_utc(row.started_at)})


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only the existence check is made
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
