"""Choosing answer spans from start/end logits, as transformers' question-answering
pipeline did (4.x; version 5 removed the pipeline, and nlpkit keeps its behaviour).

For each window: logits outside the context are pushed to -10000, start and end are
softmaxed over the window, the [CLS] probability pair is the window's "no answer"
score, and every (start, end) with ``start <= end < start + max_answer_len`` is scored
by the product of its probabilities. Spans are widened to whole words, and the same
answer text found in several windows adds up its scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nlpkit import softmax

MASKED_LOGIT = -10000.0
NO_ANSWER_START = 1_000_000.0  # larger than any probability: "no window has offered a null score yet"


@dataclass
class Answer:
    text: str
    start: int
    end: int
    score: float


def window_probabilities(
    start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Softmaxed start/end probabilities over the allowed tokens, and the [CLS] pair's score."""
    start = softmax(np.where(allowed, start_logits, MASKED_LOGIT).astype(np.float32))
    end = softmax(np.where(allowed, end_logits, MASKED_LOGIT).astype(np.float32))
    null_score = float(start[0] * end[0])
    start[0] = end[0] = 0.0
    return start, end, null_score


def best_spans(
    start: np.ndarray, end: np.ndarray, allowed: np.ndarray, candidates: int, max_answer_len: int
) -> list[tuple[int, int, float]]:
    """The ``candidates`` best (start, end, score) token spans, then only those on allowed tokens."""
    scores = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    flat = scores.ravel()
    if candidates == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < candidates:
        order = np.argsort(-flat)
    else:
        top = np.argpartition(-flat, candidates)[:candidates]
        order = top[np.argsort(-flat[top])]
    starts, ends = np.unravel_index(order, scores.shape)
    permitted = allowed.nonzero()[0]
    keep = np.isin(starts, permitted) & np.isin(ends, permitted)
    return [(int(s), int(e), float(scores[s, e])) for s, e in zip(starts[keep], ends[keep], strict=True)]


def add_answer(answers: list[Answer], text: str, start: int, end: int, score: float) -> None:
    """Record a span; the same text (ignoring case) seen before gets the score added."""
    for answer in answers:
        if answer.text.lower() == text.lower():
            answer.score += score
            return
    answers.append(Answer(text, start, end, score))


def ranked(answers: Sequence[Answer], top_k: int) -> list[Answer]:
    return sorted(answers, key=lambda answer: answer.score, reverse=True)[:top_k]
