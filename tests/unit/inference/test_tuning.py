"""``--backend auto``'s tuning on a tiny model: the fastest backend that agrees is chosen, one under the gate is
refused, int8 without its file and emulated bf16 are not timed, and the choice is recorded for the weights and
the machine. Speeds are injected through ``tune``'s ``measure`` seam: tests never assert a real speed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from reviews import sentences

from nlpkit.inference import backends, tuning
from nlpkit.inference.backends import BACKENDS, INT8_BACKENDS
from nlpkit.inference.int8 import outputs
from nlpkit.inference.onnx import quantize as onnx_quantize
from nlpkit.models.files import model_revision
from nlpkit.pipelines import load_task
from nlpkit.system import hardware
from nlpkit.tasks.base import Record, Task
from nlpkit.testing import save_tiny_distilbert

RECORDS = [Record({"text": text}) for text in sentences(50, seed=7)]
SAMPLE = {"data": "/data/dev.tsv", "records": len(RECORDS), "seed": 0}


def on_backend(task: Task, name: str) -> Task:
    """The same torch model, named as another backend: timings and answers come from the seam."""
    return type(task)(replace(task.model, backend=BACKENDS[name]), **task.settings)


def loader(model_dir: Path, calls: list[str]) -> Callable[[str], Task]:
    """Loads the int8 backends for real (they need their file), every other one as torch renamed."""
    reference = load_task("sentiment", str(model_dir))

    def load(name: str) -> Task:
        calls.append(name)
        if name in INT8_BACKENDS:
            return load_task("sentiment", str(model_dir), backend=name)
        return on_backend(reference, name)

    return load


def timings(seconds: dict[str, float], flipped: dict[str, int] | None = None) -> tuning.Measure:
    """Real answers, injected seconds per backend, and the first ``flipped[backend]`` labels turned over."""

    def measure(task: Task, records: Sequence[Record]) -> tuple[float, list[Any]]:
        name = task.model.backend.name
        answers = outputs(task, records)
        for answer in answers[: (flipped or {}).get(name, 0)]:
            answer["label"] = "positive" if answer["label"] == "negative" else "negative"
        return seconds[name], answers

    return measure


def tune(model_dir: Path, measure: tuning.Measure, candidates: Sequence[str], calls: list[str] | None = None,
         min_agreement: float = 0.99) -> tuning.Tuning:  # fmt: skip
    return tuning.tune(loader(model_dir, [] if calls is None else calls), RECORDS,
                       revision=model_revision(model_dir), sample=SAMPLE, min_agreement=min_agreement,
                       candidates=candidates, measure=measure)  # fmt: skip


@pytest.fixture
def no_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "has_bf16", lambda: False)
    monkeypatch.setattr(tuning, "gpus", lambda: ())


def test_the_fastest_backend_that_agrees_is_chosen(sentiment_copy: Path) -> None:
    result = tune(sentiment_copy, timings({"torch": 2.0, "onnx": 0.5, "openvino": 1.0}), ["torch", "onnx", "openvino"])
    assert result.backend == "onnx"
    assert [m.backend for m in result.measurements] == ["torch", "onnx", "openvino"]
    assert result.measured("onnx").seq_per_s == pytest.approx(len(RECORDS) / 0.5)
    assert all(m.agreement == 1.0 for m in result.measurements)
    assert result.verdict(result.measured("onnx"), 0.99) == "chosen: the fastest that agrees"
    assert result.verdict(result.measured("torch"), 0.99) == "slower"
    assert result.summary().startswith("onnx, 100.0 seq/s, agreement 100.00% with fp32 torch on 50 records of dev.tsv")


def test_a_faster_backend_under_the_gate_is_refused(sentiment_copy: Path) -> None:
    measure = timings({"torch": 2.0, "onnx": 0.5, "openvino": 1.0}, flipped={"onnx": 1})  # 49 of 50 agree
    result = tune(sentiment_copy, measure, ["torch", "onnx", "openvino"])
    assert result.measured("onnx").agreement == pytest.approx(0.98)
    assert result.backend == "openvino"
    assert result.verdict(result.measured("onnx"), 0.99) == "refused: agreement 98.00% < 99.00%"
    assert result.choice(0.98) == "onnx"  # the gate decides, not the speed alone
    assert result.choice(1.0) == "openvino"


def test_failing_records_count_against_a_backend_and_one_that_cannot_load_is_skipped(sentiment_copy: Path) -> None:
    load = loader(sentiment_copy, [])

    def broken_openvino(name: str) -> Task:
        if name == "openvino":
            raise RuntimeError("no CPU plugin\nmore detail")
        return load(name)

    def measure(task: Task, records: Sequence[Record]) -> tuple[float, list[Any]]:
        answers = outputs(task, records)
        if task.model.backend.name == "onnx":
            answers[:2] = [None, None]  # failed: not answered at all
        return {"torch": 1.0, "onnx": 0.5}[task.model.backend.name], answers

    result = tuning.tune(broken_openvino, RECORDS, revision="r", sample=SAMPLE, min_agreement=0.99,
                         candidates=["torch", "onnx", "openvino"], measure=measure)  # fmt: skip
    assert result.measured("onnx").agreement == pytest.approx(0.96)
    assert result.measured("openvino").skipped == "failed to load: RuntimeError: no CPU plugin"
    assert result.backend == "torch"


def test_torch_answers_for_reference_even_when_it_is_not_a_candidate(sentiment_copy: Path) -> None:
    calls: list[str] = []
    result = tune(sentiment_copy, timings({"onnx": 1.0, "openvino": 0.5}, {"openvino": 5}), ["onnx", "openvino"], calls)
    assert calls == ["torch", "onnx", "openvino"]
    assert [m.backend for m in result.measurements] == ["onnx", "openvino"]
    assert result.measured("openvino").agreement == pytest.approx(0.9)  # measured against torch's answers
    assert result.backend == "onnx"


def test_int8_without_its_file_and_emulated_bf16_are_not_timed(sentiment_copy: Path, no_bf16_units: None) -> None:
    calls: list[str] = []
    candidates = ["torch", "bf16", "int8", "openvino-int8", "torch-compiled"]
    result = tune(sentiment_copy, timings({"torch": 1.0}), candidates, calls)
    assert "bf16" not in calls  # emulated bf16 takes minutes and cannot win: never loaded
    assert "torch-compiled" not in calls  # compiling would delay every worker's start by a minute
    skipped = {m.backend: m.skipped for m in result.measurements}
    assert skipped["torch"] is None and result.backend == "torch"
    assert skipped["bf16"].startswith("emulated on this CPU")
    assert skipped["torch-compiled"].startswith("torch.compile takes about a minute")
    assert "`nlpkit models quantize MODEL` makes it (slow, so tune does not)" in skipped["int8"]
    assert "`nlpkit models quantize MODEL --backend openvino-int8`" in skipped["openvino-int8"]
    assert result.verdict(result.measured("int8"), 0.99).startswith("skipped: not made for these weights")


def test_an_int8_backend_whose_file_exists_and_passes_its_gate_is_timed(sentiment_copy: Path) -> None:
    task = load_task("sentiment", str(sentiment_copy))
    onnx_quantize.quantize(task, RECORDS[:32], min_agreement=0.5, data="test")
    result = tuning.tune(
        lambda name: load_task("sentiment", str(sentiment_copy), backend=name),
        RECORDS,
        revision=model_revision(sentiment_copy),
        sample=SAMPLE,
        min_agreement=0.0,
        candidates=["torch", "int8"],
        measure=timings({"torch": 1.0, "int8": 0.25}),
    )
    assert result.measured("int8").skipped is None
    assert result.measured("int8").seq_per_s == pytest.approx(len(RECORDS) / 0.25)
    assert result.backend == "int8"


def test_the_choice_is_recorded_for_the_weights_and_the_machine(
    sentiment_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = tune(sentiment_copy, timings({"torch": 2.0, "onnx": 1.0}), ["torch", "onnx"])
    saved = tuning.save(sentiment_copy, result)
    assert saved == sentiment_copy / "tuning" / "backend.json"
    record = json.loads(saved.read_text())
    revision = model_revision(sentiment_copy)
    assert record["revision"] == revision
    assert list(record["machines"]) == [tuning.machine_key()]
    entry = record["machines"][tuning.machine_key()]
    assert entry["backend"] == "onnx" and entry["sample"] == SAMPLE and entry["tuned_at"]
    assert {m["backend"]: m["seq_per_s"] for m in entry["measurements"]} == {"torch": 25.0, "onnx": 50.0}
    assert tuning.recorded(sentiment_copy, revision) == result

    # Another machine: other CPU flags find no entry, and their own choice sits beside this one.
    lines = ["model name\t: Intel(R) Xeon(R)", "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile"]
    monkeypatch.setattr(hardware, "_cpuinfo_lines", lambda: lines)
    hardware.cpu_flags.cache_clear()
    try:
        assert tuning.recorded(sentiment_copy, revision) is None
        tuning.save(sentiment_copy, replace(result, fingerprint=tuning.machine_key(), backend="torch"))
        assert tuning.recorded(sentiment_copy, revision).backend == "torch"
    finally:
        monkeypatch.undo()
        hardware.cpu_flags.cache_clear()
    assert tuning.recorded(sentiment_copy, revision).backend == "onnx"
    assert len(json.loads(saved.read_text())["machines"]) == 2
    assert tuning.recorded(sentiment_copy, revision, device="cpu") is None  # a named device is measured apart

    # Retrained in place: new weights, no choice yet.
    save_tiny_distilbert(sentiment_copy, labels=["negative", "positive"], seed=9)
    assert model_revision(sentiment_copy) != revision
    assert tuning.recorded(sentiment_copy, model_revision(sentiment_copy)) is None


def test_a_read_only_model_directory_keeps_its_record_in_the_cache(
    sentiment_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != sentiment_copy and writable(path, mode))
    monkeypatch.setenv("NLPKIT_CACHE_DIR", str(tmp_path / "cache"))
    revision = model_revision(sentiment_copy)
    result = tune(sentiment_copy, timings({"torch": 1.0}), ["torch"])
    with tuning.exclusive(sentiment_copy, revision):
        saved = tuning.save(sentiment_copy, result)
    assert saved == tmp_path / "cache" / "tuning" / revision / "backend.json"
    assert not (sentiment_copy / "tuning").exists()
    assert tuning.recorded(sentiment_copy, revision).backend == "torch"
