"""Sentiment: one label per text from a softmax over the classes (DistilBertForSequenceClassification)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nlpkit import (
    DataFormatError,
    EncodedExample,
    Example,
    NlpkitError,
    Prediction,
    Record,
    Task,
    TaskOption,
    Window,
    metrics,
    read_rows,
    softmax,
    text_field,
)
from nlpkit_plugins.text_classification import encode_labelled_texts, sliding_windows, truncated_windows

# The shortest window worth reading: [CLS], [SEP] and a few words, with room to overlap.
MIN_WINDOW = 16
# ``window=0``: no windows, truncate at the model's maximum even where the model names a window (what
# transformers' pipeline does, so the bench compares like with like).
TRUNCATE = 0
# SST-2 and IMDb both write 0 for negative and 1 for positive.
BINARY_LABEL_NAMES = {0: "negative", 1: "positive"}


class SentimentTask(Task):
    """Classify the sentiment of a text.

    A text longer than the model reads is either truncated to the model's maximum and
    flagged (``truncated``), or, with a ``window``, read whole: cut into windows of that many
    tokens, each sharing ``stride`` tokens with the one before, whose logits are averaged. A
    model fine-tuned on short inputs judges long ones better that way than by reading one long
    window it never trained on (the demo's model: 84-85% on whole IMDb reviews cut at 512
    tokens, 85-88% in windows of 128). The model's own ``window`` and ``stride`` (its
    nlpkit.json, written by whoever trained it) are the defaults.
    """

    name = "sentiment"
    description = "sentiment of a text (sequence classification, softmax)"
    input_fields = ("text",)
    model_class = "AutoModelForSequenceClassification"
    options = (
        TaskOption("window", int, None, "read long texts whole, in windows of this many tokens, averaged; "
                   "0 truncates [the model's window, else truncate at its maximum]"),
        TaskOption("stride", int, None, "tokens each window shares with the one before "
                   "[the model's stride with its window, else window / 4]"),
    )  # fmt: skip

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(model, **options)
        window = self.settings["window"]
        if window is None:
            window = model.metadata.get("window")
        self.window = None if window == TRUNCATE else window
        if self.window is not None and not MIN_WINDOW <= self.window <= model.max_length:
            raise NlpkitError(
                f"--window must be between {MIN_WINDOW} and the model's maximum, {model.max_length} "
                f"({TRUNCATE}: truncate)"
            )
        stride = self.settings["stride"]
        if stride is None and self.settings["window"] is None:  # the model's window, read the model's way
            stride = model.metadata.get("stride")
        self.stride = (self.window or 0) // 4 if stride is None else stride
        if self.window is not None and not 0 <= self.stride <= self.window // 2:
            raise NlpkitError(f"--stride must be between 0 and half the window ({self.window // 2})")

    def windows(self, records: Sequence[Record]) -> list[list[Window]]:
        texts = [r.fields["text"] for r in records]
        if self.window is None:
            return truncated_windows(self.model.tokenizer, texts, self.model.max_length)
        return sliding_windows(self.model.tokenizer, texts, self.window, self.stride)

    def postprocess(
        self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]
    ) -> Prediction:
        # A text read in windows is judged on their mean logits; most texts are one window (no copy then).
        logits = [output["logits"] for output in outputs]
        probabilities = softmax(logits[0] if len(logits) == 1 else np.mean(logits, axis=0)).tolist()
        names = self.model.id2label
        best = probabilities.index(max(probabilities))
        output = {
            "label": names[best],
            "score": probabilities[best],
            "scores": {names[i]: p for i, p in enumerate(probabilities)},
            "truncated": bool(windows[0].context),
        }
        if self.window is not None:
            output["windows"] = len(windows)
        return Prediction(label=output["label"], score=output["score"], output=output)

    @classmethod
    def read_examples(cls, path: Path) -> list[Example]:
        """SST-2/GLUE TSV (``sentence`` or ``text`` column), CSV, or JSON lines (IMDb) with a label."""
        examples = []
        for number, row in read_rows(path):
            where = f"{path}:{number}"
            if "label" not in row:
                raise DataFormatError(f"{where}: no 'label' column")
            examples.append(Example(Record({"text": text_field(row, where)}), _label_name(row["label"], where), where))
        if not examples:
            raise DataFormatError(f"{path}: no examples")
        return examples

    @classmethod
    def label_names(cls, examples: Sequence[Example]) -> list[str]:
        return sorted({example.target for example in examples})

    def encode_examples(self, examples: Sequence[Example], max_length: int) -> list[EncodedExample]:
        return encode_labelled_texts(self.model, examples, max_length, _class_index)

    @classmethod
    def score(cls, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """Accuracy, then macro-averaged F1 over the labels."""
        predicted = [str(prediction.label) for prediction in predictions]
        gold = [example.target for example in examples]
        return {"accuracy": metrics.accuracy(predicted, gold), "f1": metrics.macro_f1(predicted, gold)}


def _class_index(example: Example, label2id: dict[str, int]) -> int:
    if example.target not in label2id:
        known = ", ".join(sorted(label2id))
        raise DataFormatError(f"{example.source}: label '{example.target}' is not one of the model's labels ({known})")
    return label2id[example.target]


def _label_name(value: Any, where: str) -> str:
    """Integer 0/1 labels are SST-2/IMDb's negative/positive; strings are used as they are."""
    if isinstance(value, bool):
        raise DataFormatError(f"{where}: label must be a class name or integer, not a boolean")
    if isinstance(value, str):
        value = value.strip()
        if value.lstrip("-").isdigit():
            value = int(value)
        elif value:
            return value
        else:
            raise DataFormatError(f"{where}: empty label")
    if isinstance(value, int):
        return BINARY_LABEL_NAMES.get(value, str(value))
    raise DataFormatError(f"{where}: label must be a class name or integer, got {value!r}")
