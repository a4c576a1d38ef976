"""Metrics computed locally: the ``evaluate`` package fetches metric code from the hub at
run time, which an offline machine cannot do."""

from __future__ import annotations

import re
import string
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


# --- entity-level scores (seqeval's default, lenient rules) --------------------------------------


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) chunks of a BIO/IOB1/BIOES tag sequence, by seqeval's default rules:
    an ``I-X`` after ``O`` or after another type starts a chunk, a change of type ends one."""
    spans = set()
    previous_tag, previous_type, begin = "O", "", 0
    for index, label in enumerate([*tags, "O"]):
        tag, kind = _split_tag(label)
        if _chunk_ends(previous_tag, tag, previous_type, kind):
            spans.add((previous_type, begin, index - 1))
        if _chunk_starts(previous_tag, tag, previous_type, kind):
            begin = index
        previous_tag, previous_type = tag, kind
    return spans


def _split_tag(label: str) -> tuple[str, str]:
    if label in ("O", ""):
        return "O", ""
    tag, _, kind = label.partition("-")
    return tag, kind or "_"


def _chunk_ends(previous_tag: str, tag: str, previous_type: str, kind: str) -> bool:
    if previous_tag in ("E", "S"):
        return True
    if previous_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return previous_tag != "O" and previous_type != kind


def _chunk_starts(previous_tag: str, tag: str, previous_type: str, kind: str) -> bool:
    if tag in ("B", "S"):
        return True
    if previous_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and previous_type != kind


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity F1, precision and recall over sentences of tags (an entity counts
    only when its type and both boundaries match). F1 comes first: it is the headline."""
    _check_lengths(predicted, gold)
    true_positive = predicted_count = gold_count = 0
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        gold_spans, predicted_spans = entity_spans(gold_tags), entity_spans(predicted_tags)
        true_positive += len(gold_spans & predicted_spans)
        predicted_count += len(predicted_spans)
        gold_count += len(gold_spans)
    precision = true_positive / predicted_count if predicted_count else 0.0
    recall = true_positive / gold_count if gold_count else 0.0
    return {"f1": f1_score(true_positive, predicted_count, gold_count), "precision": precision, "recall": recall}


# --- SQuAD ----------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(character for character in text.lower() if character not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, answers: Sequence[str]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(answer)) for answer in answers)


def squad_f1(prediction: str, answers: Sequence[str]) -> float:
    """Token-overlap F1 against the best-matching reference answer."""
    predicted_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        answer_tokens = normalize_answer(answer).split()
        common = sum((Counter(predicted_tokens) & Counter(answer_tokens)).values())
        best = max(best, f1_score(common, len(predicted_tokens), len(answer_tokens)))
    return best


# --- multi-label ----------------------------------------------------------------------------------


def multilabel_f1(predicted: Sequence[set[str]], gold: Sequence[set[str]], labels: Sequence[str]) -> dict[str, float]:
    """Micro F1 (pooled over every label decision) and macro F1 (mean of per-label F1)."""
    _check_lengths(predicted, gold)
    per_label = {label: [0, 0, 0] for label in labels}  # true positive, predicted, gold
    for predicted_labels, gold_labels in zip(predicted, gold, strict=True):
        for label in predicted_labels & gold_labels:
            per_label[label][0] += 1
        for label in predicted_labels:
            per_label[label][1] += 1
        for label in gold_labels:
            per_label[label][2] += 1
    totals = [sum(counts[i] for counts in per_label.values()) for i in range(3)]
    macro = sum(f1_score(*counts) for counts in per_label.values()) / len(per_label) if per_label else 0.0
    return {"micro_f1": f1_score(*totals), "macro_f1": macro}
