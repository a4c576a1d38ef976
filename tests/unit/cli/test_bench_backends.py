"""Which backends ``nlpkit bench`` times when --backend names none: what `--backend auto` would weigh, plus the
compiled ones, minus those that take minutes to make or to time for a figure known in advance."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlpkit.cli import performance
from nlpkit.inference import backends
from nlpkit.inference.backends import BACKENDS


@pytest.mark.parametrize(
    ("bf16_units", "expected_bf16"),
    [(False, set()), (True, {"bf16", "bf16-compiled"})],
)
def test_the_bench_leaves_out_emulated_bf16_and_openvino_int8_unless_named(
    monkeypatch: pytest.MonkeyPatch, bf16_units: bool, expected_bf16: set[str], sentiment_copy: Path
) -> None:
    monkeypatch.setattr(backends, "has_bf16", lambda: bf16_units)
    monkeypatch.setattr(performance, "gpus", lambda: ())
    timed = {name for name in BACKENDS if performance._bench_by_default(name, sentiment_copy)}
    assert {"torch", "torch-compiled", "onnx", "int8", "openvino", "openvino-bf16"} <= timed
    assert "openvino-int8" not in timed
    assert timed & {"bf16", "bf16-compiled"} == expected_bf16


def test_the_bench_times_openvino_int8_once_its_model_is_made_for_these_weights(
    sentiment_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reviews import sentences

    from nlpkit.inference.openvino.quantize import quantize
    from nlpkit.pipelines import load_task
    from nlpkit.tasks.base import Record

    assert not performance._bench_by_default("openvino-int8", sentiment_copy)
    task = load_task("sentiment", str(sentiment_copy))
    report = quantize(task, [Record({"text": t}) for t in sentences(32, seed=2)], min_agreement=0.5, data="test")
    monkeypatch.setenv("NLPKIT_MIN_AGREEMENT", str(report.agreement + 0.001))
    assert not performance._bench_by_default("openvino-int8", sentiment_copy)  # the gate would refuse it
    monkeypatch.setenv("NLPKIT_MIN_AGREEMENT", str(report.agreement))
    assert performance._bench_by_default("openvino-int8", sentiment_copy)


def test_markdown_tables_keep_each_row_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from nlpkit.bench.suite import BenchRow

    row = BenchRow("stream openvino (Kafka -> SQLite)", 123.4, 4567.0, 3.21, 0.87, 0.9989, 1234.0, 0.31,
                   metrics={"accuracy": 0.8807}, ratio_to_peer=1.04)  # fmt: skip
    facts = {"matmul_gflops": {"fp32": 187.0}, "rounds": 3, "repeat": 2}
    performance._print_table([row], "sentiment · model · 872 records", facts, True)
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    [header] = [line for line in lines if line.startswith("| variant")]
    [body] = [line for line in lines if "stream openvino" in line]
    assert header.count("|") == body.count("|") == 11
    assert "123.4" in body and "99.89%" in body and "accuracy 0.8807" in body
    assert "fastest of 3 round(s) of 2 run(s)" in " ".join(printed.split())  # the caption may wrap


def test_the_engine_reads_as_the_pipelines_it_is_measured_against() -> None:
    from nlpkit.plugins import get_task_class

    # The sentiment model may name a window of its own; the pipelines truncate, so the bench tells it to.
    assert performance._read_as_pipelines_read(get_task_class("sentiment")) == {"window": 0}
    assert performance._read_as_pipelines_read(get_task_class("ner")) == {}


def test_every_precision_a_backend_computes_in_has_a_matmul_rate() -> None:
    from nlpkit.bench.variant import matmul_rates

    rates = matmul_rates(threads=1, seconds=0.05)
    assert set(rates) == {"fp32", "bf16", "int8"}
    # int8 always has ONNX Runtime's kernel behind it (torch has only a slow fallback without VNNI), so
    # "% peak" for an int8 variant is measured against a rate that exists, never against None or a fallback.
    assert rates["fp32"] > 0 and rates["int8"] > 0
