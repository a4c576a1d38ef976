"""Multi-label tagging: every label whose sigmoid score clears its threshold."""

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
)
from nlpkit_plugins.multilabel.data import read_multilabel_examples
from nlpkit_plugins.text_classification import encode_labelled_texts, truncated_windows

DEFAULT_THRESHOLD = 0.5


class MultilabelTask(Task):
    """Scores every label independently (sigmoid) and returns those above their thresholds.

    Per-label thresholds live with the model (``thresholds`` in its nlpkit.json, written by
    ``nlpkit tune-thresholds``); until tuned, every label uses 0.5. ``threshold`` overrides
    them all; ``top_k`` keeps at most that many labels, highest first.
    """

    name = "multilabel"
    description = "multi-label tags above per-label thresholds (sequence classification, sigmoid)"
    input_fields = ("text",)
    model_class = "AutoModelForSequenceClassification"
    head_config = {"problem_type": "multi_label_classification"}
    options = (
        TaskOption("threshold", float, None, "one threshold for every label, instead of the model's tuned ones"),
        TaskOption("top_k", int, None, "return at most this many labels, highest score first"),
    )

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(model, **options)
        if self.settings["top_k"] is not None and self.settings["top_k"] < 1:
            raise NlpkitError("--top-k must be at least 1")
        if self.settings["threshold"] is not None and not 0 <= self.settings["threshold"] <= 1:
            raise NlpkitError("--threshold must be between 0 and 1")
        self.thresholds = self._thresholds()

    def _thresholds(self) -> dict[str, float]:
        labels = list(self.model.id2label.values())
        if self.settings["threshold"] is not None:
            return dict.fromkeys(labels, self.settings["threshold"])
        tuned = self.model.metadata.get("thresholds", {})
        return {label: float(tuned.get(label, DEFAULT_THRESHOLD)) for label in labels}

    def windows(self, records: Sequence[Record]) -> list[list[Window]]:
        return truncated_windows(self.model.tokenizer, [r.fields["text"] for r in records], self.model.max_length)

    def postprocess(
        self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]
    ) -> Prediction:
        probabilities = 1.0 / (1.0 + np.exp(-outputs[0]["logits"]))
        scores = {self.model.id2label[i]: float(p) for i, p in enumerate(probabilities)}
        return self.decide(scores, truncated=bool(windows[0].context))

    def decide(self, scores: dict[str, float], truncated: bool) -> Prediction:
        """The labels at or above their thresholds, highest first, at most ``top_k``."""
        chosen = sorted((label for label, score in scores.items() if score >= self.thresholds[label]),
                        key=scores.get, reverse=True)  # fmt: skip
        if self.settings["top_k"] is not None:
            chosen = chosen[: self.settings["top_k"]]
        output = {"labels": chosen, "scores": scores, "truncated": truncated}
        return Prediction(chosen[0] if chosen else None, scores[chosen[0]] if chosen else None, output)

    # --- training and evaluation ----------------------------------------------------------------

    @classmethod
    def read_examples(cls, path: Path) -> list[Example]:
        """GoEmotions TSV (label ids, names from emotions.txt beside it), or TSV/CSV/JSON lines
        with ``text`` and ``labels``."""
        return read_multilabel_examples(path)

    @classmethod
    def label_names(cls, examples: Sequence[Example]) -> list[str]:
        return sorted({label for example in examples for label in example.target})

    def encode_examples(self, examples: Sequence[Example], max_length: int) -> list[EncodedExample]:
        """Multi-hot float targets, as the binary cross-entropy of a multi-label head expects."""
        return encode_labelled_texts(self.model, examples, max_length, _multi_hot)

    @classmethod
    def score(cls, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """Micro F1 (pooled decisions), then macro F1 (mean over labels)."""
        predicted = [set(prediction.output["labels"]) for prediction in predictions]
        gold = [set(example.target) for example in examples]
        labels = sorted(set().union(*gold, *predicted, *(p.output["scores"] for p in predictions)))
        return metrics.multilabel_f1(predicted, gold, labels)


def _multi_hot(example: Example, label2id: dict[str, int]) -> list[float]:
    unknown = set(example.target) - set(label2id)
    if unknown:
        raise DataFormatError(f"{example.source}: label(s) {sorted(unknown)} are not among the model's labels")
    targets = [0.0] * len(label2id)
    for label in example.target:
        targets[label2id[label]] = 1.0
    return targets
