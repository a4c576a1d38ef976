"""Turning a model's logits into probabilities, the same way for every task."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities along ``axis`` (each row of token logits, or a vector of class logits).

    The largest logit is subtracted first, so logits in the hundreds (masked positions are
    set to large negative values) neither overflow nor turn into NaN.
    """
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)
