"""Metrics computed locally: the ``evaluate`` package fetches metric code from the hub at
run time, which an offline machine cannot do."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def accuracy(predicted: Sequence[str], gold: Sequence[str]) -> float:
    _check_lengths(predicted, gold)
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold) if gold else 0.0


def macro_f1(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over every label seen in gold or predictions."""
    _check_lengths(predicted, gold)
    true_positive: Counter[str] = Counter()
    predicted_count = Counter(predicted)
    gold_count = Counter(gold)
    for p, g in zip(predicted, gold, strict=True):
        if p == g:
            true_positive[p] += 1
    labels = set(predicted_count) | set(gold_count)
    if not labels:
        return 0.0
    return sum(f1_score(true_positive[label], predicted_count[label], gold_count[label]) for label in labels) / len(
        labels
    )


def f1_score(true_positive: int, predicted: int, gold: int) -> float:
    """F1 from counts; 0 when there is nothing to score (no predictions and no gold)."""
    if true_positive == 0:
        return 0.0
    precision = true_positive / predicted
    recall = true_positive / gold
    return 2 * precision * recall / (precision + recall)


def _check_lengths(predicted: Sequence[object], gold: Sequence[object]) -> None:
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold labels")
