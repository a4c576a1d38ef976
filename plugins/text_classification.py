"""What the sentiment and multi-label plugins share: one window per text, truncated to the
model's maximum and flagged when that cut something off."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nlpkit.tasks import Window


def truncated_windows(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[Window]]:
    """One window per text; ``Window.context`` is True when the text did not fit."""
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=True,
        return_attention_mask=False,
    )
    # With overflow on, each text yields its first window and then the rest; the rest only
    # tells us the text did not fit.
    windows: list[list[Window]] = [[] for _ in texts]
    for ids, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"], strict=True):
        if windows[sample]:
            windows[sample][0] = Window(windows[sample][0].input_ids, context=True)
        else:
            windows[sample].append(Window(ids, context=False))
    return windows
