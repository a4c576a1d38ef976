"""``--backend auto``: the backend that runs a model fastest on this machine without changing its answers,
measured once and recorded with the model.

Why: which backend wins depends on the model and the machine (fp32 ONNX Runtime or OpenVINO beat torch on
an AVX2 server, bf16 is about 5x fp32 where AMX tiles multiply it, int8 only pays where its file exists and
passed its gate), so a user should not have to bench every pair by hand. :func:`tune` loads the model on
each candidate backend, times the engine over a calibration sample (length-sorted batches as served, a
short warm-up, then the wall time over the whole sample, once), measures each backend's agreement with fp32
torch on the same records (:mod:`nlpkit.inference.agreement`), and chooses the fastest whose agreement
reaches the minimum the int8 gate uses (``min_agreement``, 0.99 by default).

Candidates are the backends this machine runs (:func:`~nlpkit.inference.backends.backends_here`) except
torch's bf16 where it would be emulated (no bf16 units: slower than fp32, and minutes to time), and the
int8 ones unless their file already exists and passes its gate: making one is ``nlpkit models quantize``'s
slow job, never a side effect of tuning.

The choice is recorded in ``MODEL/tuning/backend.json`` (or, for a read-only model directory, under the
user's cache: the ONNX files' rules, :func:`~nlpkit.inference.onnx.runtime.cache_dir`), for the weights'
revision, one entry per machine fingerprint (:func:`nlpkit.system.hardware.fingerprint`: the CPU flags
that decide the contest and the thread count), each with every measurement, the sample and the time.
Retrained weights, or a machine with another fingerprint, find no entry and choose again. Nothing here
reads the registry or the database: where the sample comes from on first use is ``nlpkit.pipelines``'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nlpkit.errors import ModelNotFoundError, NlpkitError
from nlpkit.inference.agreement import agreement
from nlpkit.inference.backends import BACKENDS, INT8_BACKENDS, backends_here
from nlpkit.inference.int8 import outputs
from nlpkit.inference.onnx.runtime import cache_dir, read_report, write_report
from nlpkit.system.hardware import describe, fingerprint, gpus
from nlpkit.system.threads import thread_count
from nlpkit.tasks.base import Record, Task

AUTO = "auto"
FOLDER = "tuning"
RECORD_FILE = "backend.json"
REFERENCE = "torch"  # fp32 torch: every other backend's answers are compared with its
WARMUP_RECORDS = 32  # the first batches allocate and pick kernels: not throughput
FIRST_USE_RECORDS = 200  # a first use tunes on a small sample: it delays a worker's start

Loader = Callable[[str], Task]  # a backend's name -> the task with its model loaded on that backend
# How one backend is timed: the task and the sample in, the seconds and each record's output (None: failed) out.
Measure = Callable[[Task, Sequence[Record]], tuple[float, list[Any]]]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Measurement:
    """One candidate: its throughput and agreement with fp32 torch, or why it was not timed."""

    backend: str
    seq_per_s: float | None = None
    agreement: float | None = None
    skipped: str | None = None

    def passes(self, min_agreement: float) -> bool:
        return self.skipped is None and self.agreement is not None and self.agreement >= min_agreement


@dataclass(frozen=True)
class Tuning:
    """One recorded choice: these weights on one machine fingerprint."""

    revision: str
    fingerprint: str
    backend: str  # the choice, under ``min_agreement``
    min_agreement: float
    measurements: list[Measurement]
    sample: dict[str, Any]  # {"data": FILE, "records": N, "seed": S}
    machine: str  # nlpkit.system.hardware.describe(): the machine as a person reads it
    seconds: float  # how long tuning took, loading included
    tuned_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def choice(self, min_agreement: float) -> str | None:
        """The fastest measured backend whose agreement reaches ``min_agreement`` (the recorded choice unless
        the minimum has been raised since); None if none does."""
        passing = [m for m in self.measurements if m.passes(min_agreement)]
        return max(passing, key=lambda m: m.seq_per_s or 0.0).backend if passing else None

    def measured(self, backend: str) -> Measurement:
        return next(m for m in self.measurements if m.backend == backend)

    def verdict(self, measurement: Measurement, min_agreement: float) -> str:
        """What became of one candidate, as the table of ``nlpkit models tune`` says it."""
        if measurement.skipped is not None:
            return f"skipped: {measurement.skipped}"
        if not measurement.passes(min_agreement):
            return f"refused: agreement {measurement.agreement:.2%} < {min_agreement:.2%}"
        return "chosen: the fastest that agrees" if measurement.backend == self.choice(min_agreement) else "slower"

    def summary(self, backend: str | None = None) -> str:
        """The choice in a line: the backend, its speed and agreement, and what it was measured on."""
        chosen = self.measured(backend or self.backend)
        timed = sum(m.skipped is None for m in self.measurements)
        return (
            f"{chosen.backend}, {chosen.seq_per_s:,.1f} seq/s, agreement {chosen.agreement:.2%} with fp32 torch on "
            f"{self.sample['records']} records of {Path(self.sample['data']).name}: the fastest that agrees of "
            f"{timed} timed on {self.fingerprint}"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tuning:
        return cls(**data | {"measurements": [Measurement(**m) for m in data["measurements"]]})


def machine_key(device: str = AUTO) -> str:
    """What a record's entries are keyed by: this machine's fingerprint, and the device when one is named."""
    key = fingerprint(thread_count())
    return key if device == AUTO else f"{key}; device {device}"


def timed_run(task: Task, records: Sequence[Record]) -> tuple[float, list[Any]]:
    """The engine's wall time over ``records`` after a warm-up on their first few, and its outputs."""
    outputs(task, records[:WARMUP_RECORDS])
    started = time.perf_counter()
    answers = outputs(task, records)
    return time.perf_counter() - started, answers


def tune(
    load: Loader,
    records: Sequence[Record],
    *,
    revision: str,
    sample: dict[str, Any],
    min_agreement: float,
    candidates: Sequence[str] | None = None,
    device: str = AUTO,
    measure: Measure | None = None,
    progress: Progress | None = None,
) -> Tuning:
    """Time ``load(backend)`` for each candidate on ``records`` and choose, as the module docstring says.

    ``candidates`` default to every backend this machine runs; fp32 torch is loaded for the reference
    answers even when it is not one of them. ``measure`` times one backend (default :func:`timed_run`).
    """
    if not records:
        raise NlpkitError("tuning needs at least one record to time the backends on")
    measure = measure or timed_run
    say = progress or (lambda _line: None)
    started = time.perf_counter()
    names = list(dict.fromkeys(candidates or backends_here()))
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise NlpkitError(f"unknown backend '{unknown[0]}'; choose among: {', '.join(BACKENDS)}")
    reference: list[Any] | None = None
    measurements: list[Measurement] = []
    for name in [REFERENCE, *(name for name in names if name != REFERENCE)]:
        reason = _not_worth_timing(name, device)
        if reason is not None:
            measurements.append(Measurement(name, skipped=reason))
            continue
        say(f"loading the model on {name}")
        try:
            task = load(name)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load here is not a candidate
            if name == REFERENCE:
                raise
            measurements.append(Measurement(name, skipped=_not_loaded(name, exc)))
            continue
        if name not in names:  # fp32 torch for its answers only
            reference = outputs(task, records)
        else:
            say(f"timing {name} on {len(records)} records")
            seconds, answers = measure(task, records)
            reference = answers if reference is None else reference
            measurements.append(Measurement(name, len(records) / seconds, agreement(reference, _failed(answers))))
        del task
        gc.collect()  # one model at a time in memory
    timed = [m for m in measurements if m.backend in names]
    tuning = Tuning(
        revision=revision,
        fingerprint=machine_key(device),
        backend="",
        min_agreement=min_agreement,
        measurements=timed,
        sample=sample,
        machine=describe(),
        seconds=round(time.perf_counter() - started, 1),
    )
    chosen = tuning.choice(min_agreement)
    if chosen is None:
        raise NlpkitError(
            f"no backend agreed with fp32 torch on {min_agreement:.0%} of {len(records)} records; "
            "use --backend torch, or check the sample"
        )
    return replace(tuning, backend=chosen)


def _not_worth_timing(name: str, device: str) -> str | None:
    backend = BACKENDS[name]
    on_cpu = device == "cpu" or (device == AUTO and not gpus())
    if backend.compiled:
        return "torch.compile takes about a minute in every process that loads it: name it with --backend"
    if backend.emulated(on_cpu):
        return "emulated on this CPU (no AVX512-BF16 or AMX units): slower than fp32"
    if not backend.runs_here():
        return "this CPU has no bf16 units"
    return None


def _not_loaded(name: str, exc: Exception) -> str:
    if name in INT8_BACKENDS and isinstance(exc, ModelNotFoundError):
        option = "" if name == "int8" else f" --backend {name}"
        return f"not made for these weights: `nlpkit models quantize MODEL{option}` makes it (slow, so tune does not)"
    if isinstance(exc, NlpkitError):
        return str(exc).split(";")[0]
    return f"failed to load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _failed(answers: list[Any]) -> list[Any]:
    """A candidate's outputs with each record it failed (None) made a disagreement: ``agreement`` skips
    records either side lacks, and a backend must not pass the gate by failing the records it gets wrong."""
    return [{"failed": True} if answer is None else answer for answer in answers]


def record_dir(model_dir: Path, revision: str) -> Path:
    """Where a model's tuning record lives: beside it if writable, else in the user's cache."""
    return cache_dir(model_dir, revision, FOLDER)


def record_file(model_dir: Path, revision: str) -> Path:
    return record_dir(model_dir, revision) / RECORD_FILE


def recorded(model_dir: Path, revision: str, device: str = AUTO) -> Tuning | None:
    """This machine's recorded choice for these weights, or None."""
    report = read_report(record_dir(model_dir, revision), RECORD_FILE, revision)
    entry = (report or {}).get("machines", {}).get(machine_key(device))
    return Tuning.from_json(entry) if entry else None


def recorded_choice(model_dir: Path, revision: str, min_agreement: float) -> str | None:
    """The backend ``--backend auto`` would load for a model here, if a record says; for listings,
    so an unreadable record reads as none."""
    try:
        tuning = recorded(model_dir, revision)
    except (OSError, ValueError, TypeError):
        return None
    return tuning.choice(min_agreement) if tuning else None


def save(model_dir: Path, tuning: Tuning) -> Path:
    """Record ``tuning`` for its weights and machine, keeping other machines' entries (entries for other
    weights go: the directory holds these now). Call it under :func:`exclusive`."""
    directory = record_dir(model_dir, tuning.revision)
    directory.mkdir(parents=True, exist_ok=True)
    report = read_report(directory, RECORD_FILE, tuning.revision) or {"revision": tuning.revision, "machines": {}}
    report["machines"][tuning.fingerprint] = tuning.as_json()
    write_report(directory, RECORD_FILE, report)
    return record_file(model_dir, tuning.revision)


@contextlib.contextmanager
def exclusive(model_dir: Path, revision: str) -> Iterator[None]:
    """One tuning of a model at a time: workers started together wait for the first to record its choice
    rather than time backends against each other on the same cores. The lock is ``flock`` on the record's
    directory itself, so no lock file is left to travel in model archives."""
    directory = record_dir(model_dir, revision)
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
