"""Which backends ``nlpkit bench`` times when --backend names none: what `--backend auto` would weigh, plus the
compiled ones, minus those that take minutes to make or to time for a figure known in advance."""

from __future__ import annotations

import pytest

from nlpkit.cli import performance
from nlpkit.inference.backends import BACKENDS


@pytest.mark.parametrize(
    ("bf16_units", "expected_bf16"),
    [(False, set()), (True, {"bf16", "bf16-compiled"})],
)
def test_the_bench_leaves_out_emulated_bf16_and_openvino_int8_unless_named(
    monkeypatch: pytest.MonkeyPatch, bf16_units: bool, expected_bf16: set[str]
) -> None:
    monkeypatch.setattr(performance, "has_bf16", lambda: bf16_units)
    monkeypatch.setattr(performance, "gpus", lambda: ())
    timed = {name for name in BACKENDS if performance._bench_by_default(name)}
    assert {"torch", "torch-compiled", "onnx", "int8", "openvino", "openvino-bf16"} <= timed
    assert "openvino-int8" not in timed
    assert timed & {"bf16", "bf16-compiled"} == expected_bf16
