"""The search both int8 backends run: nodes ranked by sensitivity, handed back to fp32 until the sample agrees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nlpkit.inference import int8
from nlpkit.tasks.base import Record

# What quantizing each node alone does to a record's label: "c" nothing, "a" flips positives, "b" flips negatives.
FLIPS = {"c": None, "a": "positive", "b": "negative"}


class LabelFlippingTrial(int8.Trial):
    """A stand-in quantizer whose model is the set of int8 nodes; each record's answer is its label, flipped
    where an int8 node flips that label. Counts the records every run of the model sees."""

    backend = "int8"

    def __init__(self, labels: list[str]) -> None:
        records = [Record({"text": f"review {i}", "label": label}) for i, label in enumerate(labels)]
        reference = [{"label": label, "score": 0.9} for label in labels]
        super().__init__(task=None, records=records, reference=reference, candidates=list(FLIPS))  # type: ignore[arg-type]
        self.seen: list[int] = []

    def quantized(self, kept_fp32: Sequence[str], only: Sequence[str] | None = None) -> frozenset[str]:
        return frozenset(only or [node for node in self.candidates if node not in kept_fp32])

    def session(self, model: Any) -> Any:
        return model

    def outputs(self, model: frozenset[str], records: Sequence[Record]) -> list[dict[str, Any] | None]:
        self.seen.append(len(records))
        flipped = {FLIPS[node] for node in model}
        other = {"positive": "negative", "negative": "positive"}
        return [
            {"label": other[label] if label in flipped else label, "score": 0.9}
            for label in (record.fields["label"] for record in records)
        ]


def test_ranking_reads_a_random_part_of_a_large_sample_and_the_search_checks_all_of_it():
    labels = ["negative"] * 1800 + ["positive"] * 200  # a label-sorted file, taken whole: its prefix is one label
    trial = LabelFlippingTrial(labels)
    # ranked on 500 records drawn across the file: "b" flips the 90% negatives, "a" the 10% positives, "c" none;
    # a prefix of 500 negatives would have seen no positive and tied "a" with "c"
    assert trial.rank_by_sensitivity(trial.candidates, say=lambda _: None) == ["b", "a", "c"]
    assert trial.seen == [int8.RANKING_RECORDS] * 3
    trial.seen.clear()
    score, model, kept = int8.keep_fp32_until_agreed(trial, min_agreement=0.99, say=lambda _: None)
    assert kept == ["b"]  # half of the three nodes at most: the search stopped after one
    assert trial.seen == [len(labels), 500, 500, 500, len(labels)]  # every attempt is judged on the whole sample
    assert (score, model) == (0.9, frozenset({"a", "c"}))


def test_a_sample_smaller_than_the_ranking_part_is_ranked_whole():
    trial = LabelFlippingTrial(["negative", "positive"] * 50)
    assert trial.rank_by_sensitivity(list(FLIPS), say=lambda _: None)[-1] == "c"  # flips nothing
    assert trial.seen == [100] * 3
