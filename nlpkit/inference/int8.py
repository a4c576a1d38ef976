"""What both int8 backends share: a model quantized on real inputs, then handed back to fp32 node by
node until it agrees with fp32. ONNX Runtime's dynamic int8 (:mod:`nlpkit.inference.onnx.quantize`)
and NNCF's static int8 for OpenVINO (:mod:`nlpkit.inference.openvino.quantize`) differ in how they
quantize; the search and the report are the same, and so is the gate at load
(:func:`nlpkit.inference.onnx.runtime.admit_int8`):

1. the fully quantized model is tried on the calibration sample; if its decisions agree
   with fp32 on enough of the records, it is kept;
2. otherwise each quantizable node is quantized alone to measure how far it moves the
   scores on part of the sample (``RANKING_RECORDS``), and nodes are handed back to fp32
   from the most sensitive down until the whole sample agrees with a margin (unseen inputs
   agree a little less), or until half are back (the model then fails the gate: int8 in
   name only is not worth having).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nlpkit.inference.agreement import agreement, distance
from nlpkit.inference.backends import BACKENDS
from nlpkit.inference.engine import Engine, RecordFailure
from nlpkit.tasks.base import Record, Task

# The sample aims for half the disagreement the minimum allows, and it must be large enough
# to see it: on SST-2, 99.80% on 512 training phrases (all nodes int8) became 98.28% on the
# 872 dev sentences; 2,000 phrases kept 4 nodes fp32, and dev agreed on 99.89%.
CALIBRATION_MARGIN = 0.5
# Ranking runs the model once per node (24-28 in the MiniLMs measured here); a random part of the sample ranks
# them about as well as all of it: on 2,000 SST-2 phrases, 500 put the same 4 nodes first.
RANKING_RECORDS = 500
MAX_FP32_SHARE = 2  # keep at most 1/2 of the nodes fp32: past that int8 buys too little to call it int8
Progress = Callable[[str], None]


@dataclass(frozen=True)
class QuantizationReport:
    agreement: float
    records: int
    kept_fp32: list[str]
    quantized: int
    outlier_channels: int | None  # input channels multiplied in fp32 beside the int8 products; None: not split
    seconds: float
    data: str
    reduce_range: bool  # 7-bit weights, safe on CPUs without VNNI

    @property
    def as_json(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "records": self.records,
            "kept_fp32": self.kept_fp32,
            "quantized": self.quantized,
            "outlier_channels": self.outlier_channels,
            "seconds": round(self.seconds, 1),
            "data": self.data,
            "reduce_range": self.reduce_range,
        }


def outputs(task: Task, records: Sequence[Record]) -> list[dict[str, Any] | None]:
    """The task's outputs for ``records`` (None for a record that failed), as the agreement compares them."""
    return [None if isinstance(o, RecordFailure) else o.output for o in Engine(task).run(records)]


def on_session(task: Task, session: Any, backend: str) -> Task:
    """The same task and settings, its model run by ``session`` (ONNX Runtime's, or one that answers alike)."""
    return type(task)(replace(task.model, backend=BACKENDS[backend], session=session), **task.settings)


class Trial(ABC):
    """Quantizes with some nodes kept fp32 and measures the result against the fp32 outputs."""

    backend: str  # the backend whose session runs a trial

    def __init__(self, task: Task, records: Sequence[Record], reference: list[Any], candidates: list[str]) -> None:
        self.task = task
        self.records = records
        self.reference = reference
        self.candidates = candidates

    @abstractmethod
    def quantized(self, kept_fp32: Sequence[str], only: Sequence[str] | None = None) -> Any:
        """The model with every candidate but ``kept_fp32`` int8 (or ``only`` those): a file or a model."""

    @abstractmethod
    def session(self, model: Any) -> Any:
        """A session that runs a model :meth:`quantized` made."""

    def outputs(self, model: Any, records: Sequence[Record]) -> list[dict[str, Any] | None]:
        return outputs(on_session(self.task, self.session(model), self.backend), records)

    def attempt(self, kept_fp32: Sequence[str]) -> tuple[float, Any]:
        model = self.quantized(kept_fp32)
        return agreement(self.reference, self.outputs(model, self.records)), model

    def rank_by_sensitivity(self, nodes: Sequence[str], say: Progress) -> list[str]:
        """Nodes ordered by how far quantizing each alone moves the scores, worst first, measured on
        ``RANKING_RECORDS`` of the records drawn at random (a file sorted by label may come in whole)."""
        count = min(RANKING_RECORDS, len(self.records))
        chosen = sorted(random.Random(0).sample(range(len(self.records)), count))
        records, reference = [self.records[i] for i in chosen], [self.reference[i] for i in chosen]
        moved = {}
        for index, node in enumerate(nodes, 1):
            moved[node] = distance(reference, self.outputs(self.quantized([], only=[node]), records))
            say(f"sensitivity {index}/{len(nodes)}: {node} {moved[node]:.5f}")
        return sorted(nodes, key=moved.__getitem__, reverse=True)


def keep_fp32_until_agreed(trial: Trial, min_agreement: float, say: Progress) -> tuple[float, Any, list[str]]:
    """The search above: the agreement reached, the model that reached it, and the nodes kept fp32."""
    kept: list[str] = []
    target = min_agreement + (1 - min_agreement) * CALIBRATION_MARGIN
    score, model = trial.attempt(kept)
    say(f"all {len(trial.candidates)} nodes int8: agreement {score:.2%}")
    if score < target:
        ranked = trial.rank_by_sensitivity(trial.candidates, say)
        for node in ranked[: len(ranked) // MAX_FP32_SHARE]:
            kept.append(node)
            score, model = trial.attempt(kept)
            say(f"{len(kept)} node(s) kept fp32 ({node}): agreement {score:.2%}")
            if score >= target:
                break
    return score, model, kept
