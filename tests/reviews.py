"""Review-like texts for tests: random sentences for inference, and learnable data for training
(which word list a review draws from gives its label away)."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "wonderful", "fun", "moving", "brilliant"]
NEGATIVE = ["bad", "terrible", "awful", "dull", "boring", "weak"]


def write_reviews(path: Path, count: int, seed: int) -> Path:
    """Learnable data: the label is given away by which word list a review draws from."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(count):
            label = rng.randint(0, 1)
            words = rng.choices(POSITIVE if label else NEGATIVE, k=rng.randint(1, 6))
            out.write(json.dumps({"text": "the film was " + " and ".join(words), "label": label}) + "\n")
    return path


WORDS = "the film was great awful good bad movie staff food price hotel room boring fun".split()


def sentences(count: int, seed: int = 0) -> list[str]:
    draw = random.Random(seed)
    return [" ".join(draw.choices(WORDS, k=draw.randint(2, 40))) for _ in range(count)]
