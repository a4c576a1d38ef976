"""``nlpkit bench``: every way of running a task, timed in one run on the same model, data and machine.

Variants: transformers' own pipeline (default batch size and 32) as the baseline, the best
peer (OpenVINO, run as its users run it: :mod:`nlpkit.bench.peers`), the engine on each
backend, and the whole streaming path (send -> Kafka -> model -> SQLite -> commit). Each
runs in a fresh process (:mod:`nlpkit.bench.variant`) on the same records, in rounds: every
variant once per round, taking turns, its fastest round kept, so a slow minute on a shared
machine (another tenant's job) costs every row a round rather than one row its figure. Figures are
relative where the machine is noisy: throughput as a ratio to the faster pipeline setting
and to the peer, compute as a fraction of the matrix-multiply rate this machine
reaches right now in the precision the variant computes in (fp32, bf16 or int8), answers as
agreement with the fp32 engine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlpkit.errors import NlpkitError
from nlpkit.tasks.base import Example, Prediction, Record

Progress = Callable[[str], None]
# The peer in each of OpenVINO's modes, in its default precision and quantized by NNCF (nlpkit.bench.peers);
# rows are set against the fastest that keeps MIN_AGREEMENT with fp32: OpenVINO's best configuration.
PEERS = {
    f"openvino peer{' int8' if int8 else ''} ({hint.lower()} hint, batch 32)": {"hint": hint, "quantized": int8}
    for int8 in (False, True)
    for hint in ("LATENCY", "THROUGHPUT")
}
# What a fast variant must agree with fp32 on to count: to be the peer's best, or the backend the stream runs.
MIN_AGREEMENT = 0.99


@dataclass
class BenchRow:
    """One line of the report; the first eight fields are the ``--json`` keys."""

    variant: str
    seq_per_s: float
    tokens_per_s: float
    ratio_to_pipeline: float | None
    peak_fraction: float | None  # of the matmul rate in ``precision``
    agreement: float | None
    rss_mb: float
    load_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # the task's score on the data's labels
    precision: str = "fp32"  # what the variant's matrix multiplies compute in
    hardware: str = ""  # the machine, as nlpkit.system.hardware.describe() names it
    ratio_to_peer: float | None = None  # throughput over the faster OpenVINO peer's
    # The stream's: its throughput over its own engine's, timed right after each stream run in the same
    # process (the engine's row ran minutes apart in another, and shared machines drift by more than the gap).
    share_of_engine: float | None = None


@dataclass
class BenchPlan:
    task: str
    model: str  # as the user gave it: registered name or directory
    model_path: Path
    examples: list[Example]
    backends: Sequence[str]
    threads: int
    pipelines: bool = True
    peer: bool = True  # the OpenVINO peer, for the tasks that have a pipeline to run it in
    stream: bool = True
    bootstrap_servers: str | None = None
    max_length: int | None = None
    batch_size: int = 32
    max_batch_tokens: int | None = None  # the engine's default for the device
    options: dict[str, Any] = field(default_factory=dict)
    repeat: int = 2  # timed runs per variant and round, in one process; the fastest counts
    rounds: int = 2  # times every variant runs, in a fresh process each, taking turns with the others


def cut_texts(records: Sequence[Record], tokenizer: Any, max_length: int) -> list[Record]:
    """Each text shortened to its first ``max_length`` tokens (special tokens included), at a
    character boundary, so every variant reads the very same inputs."""
    texts = [record.fields["text"] for record in records]
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
    cut = []
    for record, text, offsets in zip(records, texts, encoded["offset_mapping"], strict=True):
        end = max((stop for _start, stop in offsets), default=len(text))
        cut.append(Record(dict(record.fields) | {"text": text[:end]}, record.id))
    return cut


def run(plan: BenchPlan, progress: Progress) -> tuple[list[BenchRow], dict[str, Any]]:
    """Every variant of ``plan``, then the rows compared; also returns facts about the run."""
    from nlpkit.bench.baselines import BASELINES

    records = [example.record for example in plan.examples]
    with tempfile.TemporaryDirectory(prefix="nlpkit-bench-") as scratch:
        records_file = Path(scratch) / "records.jsonl"
        # ASCII escapes: a review's U+2028 must not end its line where the reader splits lines
        records_file.write_text("".join(json.dumps(dict(r.fields)) + "\n" for r in records))
        common = {
            "task": plan.task,
            "model": plan.model,
            "model_path": str(plan.model_path),
            "records": str(records_file),
            "threads": plan.threads,
            "options": plan.options,
            "batch_size": plan.batch_size,
            "max_batch_tokens": plan.max_batch_tokens,
            "max_length": plan.max_length,
            "repeat": plan.repeat,
        }
        variants: list[tuple[str, dict[str, Any]]] = []
        if plan.pipelines and plan.task in BASELINES:
            variants += [
                ("pipeline (default batch)", {"kind": "pipeline", "pipeline_batch_size": None}),
                ("pipeline (batch 32)", {"kind": "pipeline", "pipeline_batch_size": 32}),
            ]
        if plan.peer and plan.task in BASELINES:
            peer = {"kind": "openvino-peer", "pipeline_batch_size": 32}
            variants += [(name, peer | how) for name, how in PEERS.items()]
        variants += [(f"engine {b}", {"kind": "engine", "backend": b, "keep_outputs": True}) for b in plan.backends]
        runs: dict[str, list[dict[str, Any]]] = {}

        def take_turn(name: str, spec: dict[str, Any], turn: int) -> None:
            label = name if plan.rounds == 1 else f"{name}, round {turn} of {plan.rounds}"
            runs.setdefault(name, []).append(_child(common | spec, Path(scratch), label, progress))

        for turn in range(1, plan.rounds + 1):
            for name, spec in variants:
                take_turn(name, spec, turn)
            if plan.stream and turn == 1:  # its backend, the fastest that agrees, is known from here on
                variants.append(_stream_variant(runs, plan))
                take_turn(*variants[-1], turn)
    results = {name: _fastest(kept) for name, kept in runs.items()}
    # The median of the rates measured next to each variant: one lucky or busy second must not set the scale.
    rates = {
        precision: statistics.median(measured)
        for precision in ("fp32", "bf16", "int8")
        if (
            measured := [
                r["matmul_gflops"][precision] for kept in runs.values() for r in kept if r["matmul_gflops"][precision]
            ]
        )
    }
    peer = _best_peer(results)
    facts = {"matmul_gflops": rates, "records": len(records), "rounds": plan.rounds, "repeat": plan.repeat}
    return _rows(plan, results, rates, peer), facts | {"peer": peer}


def _stream_variant(runs: dict[str, list[dict[str, Any]]], plan: BenchPlan) -> tuple[str, dict[str, Any]]:
    """The streaming path on the fastest backend of the first round whose answers agree with fp32."""
    first = {name: kept[0] for name, kept in runs.items()}
    fastest = _fastest_agreeing(first, [f"engine {backend}" for backend in plan.backends])
    best = fastest.removeprefix("engine ") if fastest else plan.backends[0]
    spec = {"kind": "stream", "backend": best, "keep_outputs": True, "bootstrap_servers": plan.bootstrap_servers}
    return f"stream {best} (Kafka -> SQLite)", spec


def _fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's rounds as one result: its fastest time (a stream's engine's too, each timed beside its
    stream), its quickest load, its largest RSS and the first round's answers."""
    fastest = dict(runs[0])
    for key in ("seconds", "engine_seconds", "load_s"):
        if key in fastest:
            fastest[key] = min(run[key] for run in runs)
    fastest["rss_mb"] = max(run["rss_mb"] for run in runs)
    return fastest


def _child(spec: dict[str, Any], scratch: Path, name: str, progress: Progress) -> dict[str, Any]:
    progress(f"running {name}")
    spec_file, result_file = scratch / "spec.json", scratch / "result.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "nlpkit.bench.variant", str(spec_file), str(result_file)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not result_file.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NlpkitError(f"benchmark variant '{name}' failed: {last}")
    return json.loads(result_file.read_text())


def _fastest_agreeing(results: dict[str, dict[str, Any]], variants: Sequence[str]) -> str | None:
    """The fastest of ``variants`` (those that ran) whose answers match fp32's on at least ``MIN_AGREEMENT`` of
    the records (any of them where the run has no fp32 engine to compare with); None when none agrees."""
    from nlpkit.inference.agreement import agreement

    reference = results.get("engine torch")
    agreeing = [
        (results[name]["seconds"], name)
        for name in variants
        if name in results
        and (reference is None or agreement(reference["outputs"], results[name]["outputs"]) >= MIN_AGREEMENT)
    ]
    return min(agreeing)[1] if agreeing else None


def _best_peer(results: dict[str, dict[str, Any]]) -> str | None:
    """The yardstick: the fastest peer row that agrees (OpenVINO's best configuration), if any."""
    return _fastest_agreeing(results, list(PEERS))


def _rows(
    plan: BenchPlan, results: dict[str, dict[str, Any]], rates: dict[str, float], best_peer: str | None
) -> list[BenchRow]:
    from nlpkit.inference.agreement import agreement
    from nlpkit.plugins import get_task_class
    from nlpkit.system.hardware import describe

    count = len(plan.examples)
    measured = next((r for r in results.values() if "flops" in r), None)
    pipelines = [r["seconds"] for name, r in results.items() if name.startswith("pipeline")]
    baseline = min(pipelines) if pipelines else None
    peer = results[best_peer]["seconds"] if best_peer else None
    reference = results.get("engine torch")
    task_class = get_task_class(plan.task)
    machine = describe()
    rows = []
    for name, result in results.items():
        seconds = result["seconds"]
        full = result.get("full_outputs")
        precision = result.get("precision") or variant_precision(name)  # the peer's is what OpenVINO chose
        rate = rates.get(precision)
        metrics = {}
        if full and all(output is not None for output in full):
            predictions = [Prediction(o.get("label"), o.get("score"), o) for o in full]
            metrics = task_class.score(predictions, plan.examples)
        rows.append(
            BenchRow(
                variant=name,
                seq_per_s=count / seconds,
                tokens_per_s=measured["tokens"] / seconds if measured else 0.0,
                ratio_to_pipeline=baseline / seconds if baseline else None,
                peak_fraction=_flops(name, measured) / seconds / (rate * 1e9) if measured and rate else None,
                agreement=agreement(reference["outputs"], result["outputs"]) if reference else None,
                rss_mb=result["rss_mb"],
                load_s=result["load_s"],
                metrics=metrics,
                precision=precision,
                hardware=machine,
                ratio_to_peer=peer / seconds if peer else None,
                share_of_engine=result["engine_seconds"] / seconds if "engine_seconds" in result else None,
            )
        )
    return rows


def variant_precision(variant: str) -> str:
    """What a variant's matrix multiplies compute in: a pipeline in fp32, the engine and the stream
    in their backend's precision ("engine int8", "stream bf16 (Kafka -> SQLite)")."""
    from nlpkit.inference.backends import get_backend

    kind, _, rest = variant.partition(" ")
    return "fp32" if kind == "pipeline" else get_backend(rest.split()[0]).precision


def _flops(variant: str, measured: dict[str, Any]) -> float:
    """The work a variant really does: a pipeline and the peer run the whole model, while the engine
    (alone or in a worker) may skip some of it (a sequence classifier's last layer for all but [CLS])."""
    return measured["flops"] if variant.startswith(("engine", "stream")) else measured["full_flops"]
