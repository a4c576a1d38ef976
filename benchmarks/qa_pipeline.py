"""Extractive QA: nlpkit's engine against transformers 4.57's question-answering pipeline, side by side.

transformers 5 removed that pipeline, so it runs in a side environment with 4.57
(nlpkit.bench.side_env, cached under ~/.cache/nlpkit/envs; torch is borrowed from .venv).
Every variant runs in a fresh process with the same thread count on the same SQuAD v1.1
dev questions (a seeded random sample, never a prefix) and the pipeline's defaults
(doc_stride 128, max_seq_len 384, max_answer_len 15, top_k 1): its peak RSS and load
time are its own, and no variant warms caches for the next. Answers are compared with
the pipeline at batch 32 by character offsets.

    .venv/bin/python benchmarks/qa_pipeline.py [--model DIR] [--limit 500] [--threads N] [--json]

Without --model, a QA model is built once under ~/.cache/nlpkit/bench-models/qa-minilm
from the 6-layer starter BERT with a random, untrained QA head: the figures are then
about speed and identical answers, not accuracy.

This file is also the per-variant child process (``--child SPEC RESULT``), in .venv for
nlpkit and in the side environment for the pipeline; so it imports nothing but the
standard library at module level, and nlpkit (which needs transformers 5) only where used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SQUAD_DEV = DATA / "squad" / "dev-v1.1.json"
WARMUP_QUESTIONS = 16
HEAD_SEED = 0
# The 4.57 pipeline's defaults, passed to both sides so the comparison is visibly like for like.
QA_OPTIONS = {"doc_stride": 128, "max_seq_len": 384, "max_question_len": 64, "max_answer_len": 15, "top_k": 1}
REFERENCE = "pipeline 4.57 (batch 32)"

Question = dict[str, str]
Answer = dict[str, Any]  # start, end (characters in the context) and score; None when a record failed
Runner = Callable[[Sequence[Question]], list[Answer | None]]


@dataclass
class Row:
    """One line of the report; the fields are the ``--json`` keys."""

    variant: str
    questions_per_s: float
    ratio_to_pipeline: float
    identical: int  # answers with the reference's start and end offsets
    questions: int
    score_max_abs_diff: float | None  # over the identical answers
    rss_mb: float
    load_s: float


# --- the parent: data, model, variants, report -------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="DistilBertForQuestionAnswering directory with its tokenizer")
    parser.add_argument("--limit", type=int, default=500, help="SQuAD dev questions, drawn at random [500]")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the question sample [2026]")
    parser.add_argument("--threads", type=int, help="torch threads in every variant [the usable CPUs]")
    parser.add_argument("--data", type=Path, default=SQUAD_DEV, help="SQuAD v1.1 JSON [shared dev-v1.1.json]")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of a table")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return

    from nlpkit.models.files import read_metadata
    from nlpkit.system.threads import available_cpus

    say = console(stderr=True).print
    threads = args.threads or available_cpus()
    model_dir = args.model.expanduser().resolve() if args.model else bench_model(say)
    if not (model_dir / "config.json").is_file():
        parser.error(f"{model_dir} is not a model directory (no config.json)")
    questions = squad_questions(args.data, args.limit, args.seed)
    notes = []
    if read_metadata(model_dir).get("untrained_head"):
        notes.append("The QA head is random and untrained: the figures are about speed and identical answers, "
                     "not accuracy.")  # fmt: skip
    results, skipped = run_variants(model_dir, questions, threads, say)
    notes += skipped
    rows = compare(results, len(questions))
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
    else:
        title = f"extractive QA, {len(questions)} SQuAD v1.1 dev questions (seed {args.seed}), {threads} threads"
        print_table(rows, title, f"model {model_dir}", notes)
    for line in differences(results, questions):
        say(line)


def squad_questions(path: Path, limit: int, seed: int) -> list[Question]:
    """``limit`` questions drawn at random from every article's paragraphs (articles are topical: no prefix)."""
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    flat = [
        {"id": qa["id"], "question": qa["question"], "context": paragraph["context"]}
        for article in articles
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    return random.Random(seed).sample(flat, min(limit, len(flat)))


def bench_model(say: Callable[[str], None]) -> Path:
    """The default model: the starter BERT as DistilBERT with a seeded random QA head, built once and cached."""
    from nlpkit.bench.models import starter_with_head

    say("the benchmark QA model (built once under ~/.cache/nlpkit/bench-models)")
    return starter_with_head("qa-minilm", "DistilBertForQuestionAnswering", seed=HEAD_SEED)


def run_variants(
    model_dir: Path, questions: list[Question], threads: int, say: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every variant's result by name, and notes on the variants left out."""
    from nlpkit.bench.side_env import LEGACY_TRANSFORMERS, cached_environment
    from nlpkit.system.collector import YOUNG_COLLECTION_THRESHOLD
    from nlpkit.system.hardware import has_bf16

    say(f"preparing the {LEGACY_TRANSFORMERS} side environment (installs on the first run only)")
    legacy = cached_environment(LEGACY_TRANSFORMERS)
    # Every child's collector as the nlpkit command sets it (nlpkit.system.collector), the pipeline's too; its
    # side environment cannot import nlpkit, so the threshold travels in the spec.
    common = {"model": str(model_dir), "threads": threads, "young_collection_threshold": YOUNG_COLLECTION_THRESHOLD}
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("pipeline 4.57 (default batch)", legacy, {"kind": "pipeline", "batch_size": None}),
        (REFERENCE, legacy, {"kind": "pipeline", "batch_size": 32}),
        ("nlpkit engine torch", sys.executable, {"kind": "engine", "backend": "torch"}),
        ("nlpkit engine onnx", sys.executable, {"kind": "engine", "backend": "onnx"}),
        ("nlpkit engine openvino", sys.executable, {"kind": "engine", "backend": "openvino"}),
    ]
    skipped = []
    if has_bf16():
        for backend in ("bf16", "openvino-bf16"):
            variants.append((f"nlpkit engine {backend}", sys.executable, {"kind": "engine", "backend": backend}))
    else:
        skipped.append("bf16 skipped: this CPU has no native bf16, and torch's emulation is slower than fp32.")
    if int8_exists(model_dir):
        variants.append(("nlpkit engine int8", sys.executable, {"kind": "engine", "backend": "int8"}))
    else:
        skipped.append(f"int8 skipped: no int8 model exists for this model (make one with `nlpkit models quantize "
                       f"{model_dir} --task qa --data FILE`).")  # fmt: skip
    if not onnx_exported(model_dir):
        skipped.append("The onnx load time includes the one-time ONNX export (cached for later runs).")
    results = {}
    with tempfile.TemporaryDirectory(prefix="nlpkit-qa-bench-") as scratch:
        questions_file = Path(scratch) / "questions.json"
        questions_file.write_text(json.dumps(questions))
        for name, python, spec in variants:
            say(f"running {name}")
            full_spec = common | spec | {"questions": str(questions_file)}
            try:
                results[name] = run_in_child(python, full_spec, Path(scratch))
            except RuntimeError as exc:
                if spec.get("backend") != "int8":
                    raise SystemExit(f"{name} failed: {exc}") from exc
                skipped.append(f"int8 skipped: {exc}")
    return results, skipped


def int8_exists(model_dir: Path) -> bool:
    """Whether ``--backend int8`` would find a quantized file for these weights (checked without loading)."""
    from nlpkit.inference.onnx import runtime

    return _cached_onnx(model_dir, runtime.INT8_FILE, runtime.INT8_REPORT)


def onnx_exported(model_dir: Path) -> bool:
    """Whether the fp32 ONNX file exists already, so the onnx variant's load time holds no export."""
    from nlpkit.inference.onnx import runtime

    return _cached_onnx(model_dir, runtime.FP32_FILE, runtime.EXPORT_REPORT)


def _cached_onnx(model_dir: Path, file: str, report: str) -> bool:
    """Whether ``file`` exists for the current weights in either place nlpkit keeps ONNX files.

    Those are beside the model, or the user cache by revision when the model directory is
    read-only. Checking both, rather than asking onnxrt which one applies, keeps this
    script independent of that helper's signature; a file the loader still refuses makes
    the variant fail, which the report shows as skipped with the loader's reason.
    """
    from nlpkit.inference.onnx import runtime
    from nlpkit.models.files import model_revision
    from nlpkit.system.cache import cache_dir

    revision = model_revision(model_dir)
    return any(
        (directory / file).is_file() and runtime.read_report(directory, report, revision) is not None
        for directory in (model_dir / "onnx", cache_dir() / "onnx" / revision)
    )


def run_in_child(python: str, spec: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Run one variant as ``python THIS_FILE --child``; RuntimeError with its last stderr line if it fails."""
    spec_file, result_file = scratch / "spec.json", scratch / "result.json"
    spec_file.write_text(json.dumps(spec))
    result_file.unlink(missing_ok=True)
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [python, __file__, "--child", str(spec_file), str(result_file)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not result_file.is_file():
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(result_file.read_text())


def compare(results: dict[str, dict[str, Any]], count: int) -> list[Row]:
    """Rows with throughput relative to the faster pipeline setting and answers relative to batch 32."""
    baseline = min(result["seconds"] for name, result in results.items() if name.startswith("pipeline"))
    reference = results[REFERENCE]["answers"]
    rows = []
    for name, result in results.items():
        same = [
            abs(answer["score"] - expected["score"])
            for answer, expected in zip(result["answers"], reference, strict=True)
            if answer and expected and (answer["start"], answer["end"]) == (expected["start"], expected["end"])
        ]
        rows.append(
            Row(
                variant=name,
                questions_per_s=count / result["seconds"],
                ratio_to_pipeline=baseline / result["seconds"],
                identical=len(same),
                questions=count,
                score_max_abs_diff=max(same) if same else None,
                rss_mb=result["rss_mb"],
                load_s=result["load_s"],
            )
        )
    return rows


def differences(results: dict[str, dict[str, Any]], questions: list[Question], shown: int = 5) -> list[str]:
    """The first answers that differ from the reference, with both spans, so a mismatch can be looked into."""
    reference = results[REFERENCE]["answers"]
    lines = []
    for name, result in results.items():
        differing = [
            (question, answer, expected)
            for question, answer, expected in zip(questions, result["answers"], reference, strict=True)
            if not answer or not expected or (answer["start"], answer["end"]) != (expected["start"], expected["end"])
        ]
        for question, answer, expected in differing[:shown]:
            spans = f"{_span(question, answer)} vs {_span(question, expected)}"
            lines.append(f"{name} differs on {question['id']}: {spans}")
        if len(differing) > shown:
            lines.append(f"{name}: {len(differing) - shown} more differ")
    return lines


def _span(question: Question, answer: Answer | None) -> str:
    if answer is None:
        return "no answer (failed)"
    text = question["context"][answer["start"] : answer["end"]]
    return f"[{answer['start']}:{answer['end']}] {text!r} score {answer['score']:.6g}"


def console(stderr: bool = False) -> Any:
    """A rich console 120 columns wide when output is not a terminal (rich would squeeze the table into 80)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 120)


def print_table(rows: list[Row], title: str, caption: str, notes: list[str]) -> None:
    from rich.table import Table

    table = Table(title=title, caption=caption)
    table.add_column("variant", no_wrap=True)
    for column in ("questions/s", "vs faster pipeline", "identical answers", "score max |diff|", "RSS MB", "load s"):
        table.add_column(column, justify="right")
    for row in rows:
        identical = "reference" if row.variant == REFERENCE else f"{row.identical}/{row.questions}"
        diff = "-" if row.score_max_abs_diff is None else f"{row.score_max_abs_diff:.1e}"
        table.add_row(
            row.variant, f"{row.questions_per_s:.1f}", f"{row.ratio_to_pipeline:.2f}x", identical, diff,
            f"{row.rss_mb:.0f}", f"{row.load_s:.1f}",
        )  # fmt: skip
    out = console()
    out.print(table)
    for note in notes:
        out.print(f"- {note}")


# --- the child: one variant in a fresh process ------------------------------------------------


def run_child(spec_file: str, result_file: str) -> None:
    """Load, warm up on the first questions, then time all of them; write answers, times and peak RSS."""
    import gc

    import torch

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    gc.set_threshold(spec["young_collection_threshold"], *gc.get_threshold()[1:])
    questions = json.loads(Path(spec["questions"]).read_text())
    started = time.perf_counter()
    run = _pipeline_runner(spec) if spec["kind"] == "pipeline" else _engine_runner(spec)
    load_s = time.perf_counter() - started
    run(questions[:WARMUP_QUESTIONS])  # first calls allocate and pick kernels: not throughput
    started = time.perf_counter()
    answers = run(questions)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "load_s": load_s,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "answers": answers,
    }
    Path(result_file).write_text(json.dumps(result))


def _pipeline_runner(spec: dict[str, Any]) -> Runner:
    """transformers 4.57's pipeline; runs in the side environment, so transformers here is 4.57."""
    from transformers import pipeline

    qa = pipeline("question-answering", model=spec["model"], device=-1)
    batch = {"batch_size": spec["batch_size"]} if spec["batch_size"] else {}

    def run(questions: Sequence[Question]) -> list[Answer | None]:
        inputs = [{"question": q["question"], "context": q["context"]} for q in questions]
        outputs = qa(inputs, **batch, **QA_OPTIONS)
        outputs = outputs if isinstance(outputs, list) else [outputs]  # one question gives a bare dict
        return [{"start": o["start"], "end": o["end"], "score": float(o["score"])} for o in outputs]

    return run


def _engine_runner(spec: dict[str, Any]) -> Runner:
    from nlpkit.inference.engine import Engine, RecordFailure
    from nlpkit.pipelines import load_task
    from nlpkit.tasks.base import Record

    task = load_task("qa", spec["model"], backend=spec["backend"], device="cpu", **QA_OPTIONS)
    engine = Engine(task)

    def run(questions: Sequence[Question]) -> list[Answer | None]:
        records = [Record({"question": q["question"], "context": q["context"]}) for q in questions]
        answers: list[Answer | None] = []
        for outcome in engine.run(records):
            best = None if isinstance(outcome, RecordFailure) else outcome.output["answers"][0]
            answers.append(best and {"start": best["start"], "end": best["end"], "score": float(best["score"])})
        return answers

    return run


if __name__ == "__main__":
    main()
