"""Do two backends give the same answers? Decisions compared, scores set aside.

A prediction's *decision* is its output with every ``score``/``scores`` removed: the
label, the set of labels, the entities' types and spans, the answers' spans. Two
backends agree on a record when their decisions are equal. That is what a user
sees change when numerics change, so it is what the int8 gate and the benchmark
measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SCORE_KEYS = frozenset({"score", "scores"})


def decision(output: Any) -> Any:
    """``output`` with every score removed, at any depth."""
    if isinstance(output, dict):
        return {key: decision(value) for key, value in output.items() if key not in SCORE_KEYS}
    if isinstance(output, list):
        return [decision(value) for value in output]
    return output


def agreement(reference: Sequence[Any], candidate: Sequence[Any]) -> float:
    """The fraction of records whose decisions are equal; records either side lacks (None) are skipped."""
    pairs = [(a, b) for a, b in zip(reference, candidate, strict=True) if a is not None and b is not None]
    if not pairs:
        return 0.0
    return sum(decision(a) == decision(b) for a, b in pairs) / len(pairs)


def distance(reference: Sequence[Any], candidate: Sequence[Any]) -> float:
    """How far apart two backends are, finer than agreement: 1 for a changed decision, else the
    mean absolute difference of the scores. Ranks which layers quantization hurts most."""
    total = 0.0
    pairs = [(a, b) for a, b in zip(reference, candidate, strict=True) if a is not None and b is not None]
    for a, b in pairs:
        if decision(a) != decision(b):
            total += 1.0
            continue
        left, right = _scores(a), _scores(b)
        total += sum(abs(x - y) for x, y in zip(left, right, strict=True)) / max(1, len(left))
    return total / max(1, len(pairs))


def _scores(output: Any) -> list[float]:
    """Every number under a score key, in a fixed order (same decision means same structure)."""
    if isinstance(output, dict):
        found: list[float] = []
        for key in sorted(output):
            value = output[key]
            if key in SCORE_KEYS:
                found.extend(_numbers(value))
            else:
                found.extend(_scores(value))
        return found
    if isinstance(output, list):
        return [number for value in output for number in _scores(value)]
    return []


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [number for key in sorted(value) for number in _numbers(value[key])]
    if isinstance(value, list):
        return [number for item in value for number in _numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) else []
