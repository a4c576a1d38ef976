"""Per-label decision thresholds, chosen on a development set.

A multi-label model's sigmoid scores are not calibrated alike: rare labels rarely reach
0.5 even when right. Choosing, for each label, the threshold that maximises that label's
F1 on held-out data is the standard fix (GoEmotions' macro-F1 depends on it).
"""

from __future__ import annotations

import numpy as np

GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)


def tune_thresholds(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """For each label (column), the grid threshold with the best F1; the lowest on ties.

    ``scores`` is (examples, labels) probabilities, ``gold`` the matching 0/1 matrix.
    """
    chosen = scores[:, :, None] >= GRID  # examples x labels x thresholds
    truth = gold.astype(bool)[:, :, None]
    true_positive = (chosen & truth).sum(axis=0)
    predicted = chosen.sum(axis=0)
    actual = truth.sum(axis=0)
    f1 = np.divide(
        2 * true_positive, predicted + actual, out=np.zeros(true_positive.shape), where=predicted + actual > 0
    )
    return GRID[f1.argmax(axis=1)]
