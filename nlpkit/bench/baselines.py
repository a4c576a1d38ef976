"""What nlpkit is measured against: the transformers pipeline that does the same job as each task.

Used by ``nlpkit bench``. Outputs are converted into nlpkit's shape so answers can be
compared field by field. transformers 5 has no extractive question-answering
pipeline, so ``qa`` has no in-process baseline (benchmarks/qa_pipeline.py runs 4.57's
in a throwaway environment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nlpkit.tasks.base import Record


@dataclass(frozen=True)
class Baseline:
    pipeline_task: str
    convert: Callable[[Record, Any], dict[str, Any]]
    load_options: dict[str, Any] = field(default_factory=dict)
    call_extra: dict[str, Any] = field(default_factory=dict)
    truncates: bool = True  # token-classification splits long texts itself and takes no truncation options

    @staticmethod
    def inputs(record: Record) -> str:
        return record.fields["text"]

    def call_options(self, max_length: int | None) -> dict[str, Any]:
        if not self.truncates:
            return self.call_extra
        cut = {"truncation": True, "max_length": max_length} if max_length else {"truncation": True}
        return cut | self.call_extra


def _label(_record: Record, output: Any) -> dict[str, Any]:
    return {"label": output["label"]}


def _labels(_record: Record, output: Any) -> dict[str, Any]:
    return {"labels": sorted(item["label"] for item in output if item["score"] >= 0.5)}


def _entities(record: Record, output: Any) -> dict[str, Any]:
    text = record.fields["text"]
    return {
        "entities": [
            {"type": e["entity_group"], "start": e["start"], "end": e["end"], "text": text[e["start"] : e["end"]]}
            for e in output
        ]
    }


BASELINES = {
    "sentiment": Baseline("text-classification", _label),
    "multilabel": Baseline("text-classification", _labels, call_extra={"function_to_apply": "sigmoid", "top_k": None}),
    "ner": Baseline(
        "token-classification", _entities, load_options={"aggregation_strategy": "simple"}, truncates=False
    ),
}
