"""What the sentiment and multi-label plugins share: one window per text, truncated to the
model's maximum and flagged when that cut something off, or a long text read whole in
overlapping windows; and text-level training features."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nlpkit import EncodedExample, Example, TaskModel, Window


def truncated_windows(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[Window]]:
    """One window per text; ``Window.context`` is True when the text did not fit."""
    # The first of a text's windows is its truncation; any further one only tells that it did not fit.
    return [
        [Window(windows[0].input_ids, context=len(windows) > 1)]
        for windows in sliding_windows(tokenizer, texts, max_length, stride=0)
    ]


def sliding_windows(tokenizer: Any, texts: Sequence[str], window: int, stride: int) -> list[list[Window]]:
    """Each text whole, in windows of at most ``window`` tokens (special tokens included), each
    sharing its first ``stride`` tokens with the end of the one before: the way a long text is
    read to its end by a model trained on shorter ones."""
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=window,
        stride=stride,
        return_overflowing_tokens=True,
        return_attention_mask=False,
    )
    windows: list[list[Window]] = [[] for _ in texts]
    for ids, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"], strict=True):
        windows[sample].append(Window(ids, context=False))
    return windows


def encode_labelled_texts(
    model: TaskModel,
    examples: Sequence[Example],
    max_length: int,
    targets: Callable[[Example, dict[str, int]], Any],
) -> list[EncodedExample]:
    """Token ids of each example's text with ``targets(example, label2id)`` as its labels."""
    if not examples:
        return []
    label2id = {name: index for index, name in model.id2label.items()}
    encoded = model.tokenizer(
        [example.record.fields["text"] for example in examples],
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
    )
    return [
        EncodedExample(input_ids=ids, labels=targets(example, label2id))
        for example, ids in zip(examples, encoded["input_ids"], strict=True)
    ]
