"""A recorded ``--backend auto`` choice written by hand, so tests of what reads it need no tuning run."""

from __future__ import annotations

from pathlib import Path

from nlpkit.inference import tuning
from nlpkit.models.files import model_revision
from nlpkit.system.hardware import fingerprint


def record_choice(model_dir: Path, backend: str, threads: int | None = None) -> tuning.Tuning:
    """Record ``backend`` as this machine's choice for the weights in ``model_dir`` (beside torch, slower),
    for the threads this process runs on, or for ``threads`` (a child process's ``NLPKIT_THREADS``)."""
    measured = [tuning.Measurement("torch", 100.0, 1.0)]
    if backend != "torch":
        measured.append(tuning.Measurement(backend, 300.0, 1.0))
    choice = tuning.Tuning(
        revision=model_revision(model_dir),
        fingerprint=tuning.machine_key() if threads is None else fingerprint(threads),
        backend=backend,
        min_agreement=0.99,
        measurements=measured,
        sample={"data": "/data/dev.tsv", "records": 200, "seed": 0},
        machine="a test machine",
        seconds=1.0,
    )
    tuning.save(model_dir, choice)
    return choice
