"""How ``nlpkit bench`` runs its variants: in rounds, taking turns, each row its variant's fastest round.

The variants' processes are replaced by a stand-in that hands back made-up timings: what is tested is the
order of the turns and how the rounds become rows, not the timing (tests/unit/inference/test_backends.py
runs the real processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nlpkit.bench import suite
from nlpkit.tasks.base import Example, Record

# Seconds per variant and round: engine onnx is the faster engine in round 1, torch in round 2.
SECONDS = {
    ("pipeline (default batch)", 1): 5.0,
    ("pipeline (default batch)", 2): 5.0,
    ("pipeline (batch 32)", 1): 4.0,
    ("pipeline (batch 32)", 2): 3.0,
    ("engine torch", 1): 2.0,
    ("engine torch", 2): 0.5,
    ("engine onnx", 1): 1.0,
    ("engine onnx", 2): 1.5,
    ("stream onnx (Kafka -> SQLite)", 1): 1.6,
    ("stream onnx (Kafka -> SQLite)", 2): 1.2,
}


def test_every_variant_takes_a_turn_each_round_and_keeps_its_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[tuple[str, int]] = []

    def child(spec: dict[str, Any], scratch: Path, label: str, progress: Any) -> dict[str, Any]:
        name, _, round_part = label.partition(", round ")
        turn = int(round_part.split()[0])
        turns.append((name, turn))
        # onnx answers otherwise in round 2: were a later round's answers kept, its agreement would fall
        answer = {"label": "negative" if (name, turn) == ("engine onnx", 2) else "positive"}
        result = {
            "seconds": SECONDS[name, turn],
            "load_s": 0.5 / turn,
            "rss_mb": 100.0 * turn,
            "matmul_gflops": {"fp32": 100.0 * turn, "bf16": None, "int8": None},
            "outputs": [answer],
            "full_outputs": [answer] if spec.get("keep_outputs") else None,
        }
        if spec["kind"] == "stream":
            result["engine_seconds"] = {1: 1.4, 2: 1.1}[turn]
        return result

    monkeypatch.setattr(suite, "_child", child)
    monkeypatch.setattr(suite, "_flops", lambda variant, measured: 0.0)
    plan = suite.BenchPlan(
        task="sentiment",
        model="m",
        model_path=Path("m"),
        examples=[Example(Record({"text": "fine"}), "positive")],
        backends=["torch", "onnx"],
        threads=2,
        peer=False,
        rounds=2,
    )

    rows, facts = suite.run(plan, progress=lambda line: None)

    names = ["pipeline (default batch)", "pipeline (batch 32)", "engine torch", "engine onnx"]
    stream = "stream onnx (Kafka -> SQLite)"  # the fastest agreeing engine of round 1, not of the whole run
    assert turns == [*[(n, 1) for n in names], (stream, 1), *[(n, 2) for n in [*names, stream]]]
    by_name = {row.variant: row for row in rows}
    assert by_name["engine torch"].seq_per_s == pytest.approx(1 / 0.5)  # its round 2
    assert by_name["engine onnx"].seq_per_s == pytest.approx(1 / 1.0)  # its round 1
    assert by_name["engine torch"].ratio_to_pipeline == pytest.approx(3.0 / 0.5)  # the faster pipeline's best
    assert by_name[stream].share_of_engine == pytest.approx(1.1 / 1.2)  # both fastest rounds
    assert by_name["engine torch"].rss_mb == 200.0 and by_name["engine torch"].load_s == 0.25
    assert by_name["engine onnx"].agreement == 1.0  # round 1's answers, as torch's
    assert facts["matmul_gflops"] == {"fp32": 150.0} and (facts["rounds"], facts["repeat"]) == (2, plan.repeat)
