"""Records in, predictions out: length-sorted micro-batches with dynamic padding.

The engine is task-agnostic. A task cuts records into windows of token ids; the
engine sorts all windows by length, cuts them into batches bounded by a count, a
padded-token budget and an attention budget (length squared), so a batch of long
reviews and a batch of short sentences cost about the same, pads each batch only to
its own longest window, runs the model on its backend (several batches side by side, each
on its share of the threads, where the backend runs them so), and hands each record's
outputs back to the task. Results come back in input order. The batches run on the
engine's own threads, so a caller may go on while they do (``Engine.start``).

A record whose windows make the model fail, or whose postprocessing fails, becomes a
:class:`RecordFailure` while the rest of its batch still gets predictions: the
worker turns failures into dead letters instead of losing a whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from nlpkit.errors import NlpkitError
from nlpkit.tasks.base import Prediction, Record, Task, Window

DEFAULT_BATCH_SIZE = 32
# Padded tokens per batch. On CPU a batch that fits the caches wins: 256-token IMDb
# reviews ran at 117 GFLOP/s in batches of 8 and 102 in batches of 32 (2 cores, 2 MB L2
# each); a GPU wants its batches as large as memory allows.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}
# Attention scores grow with the square of the length: 32 reviews of 512 tokens would hold
# 32 x 12 heads x 512 x 512 floats (400 MB) per layer where the kernel materialises them.
# Capping batch x length^2 keeps long batches near 8 x 512 and costs short ones nothing.
DEFAULT_MAX_BATCH_ATTENTION = 8 * 512 * 512
# What one more batch costs beyond its padded tokens, in tokens: the call and its setup. On 2 Zen 3
# cores an OpenVINO forward of the 6-layer MiniLM took about 1.5 ms plus 0.16 ms per token, so about
# ten tokens' worth; 32 leaves room for backends with heavier calls (torch eager). A GPU runs a
# token in a small fraction of that and a call in about as long, so a batch is worth hundreds of
# tokens there (reasoned, not yet measured: no GPU has been at hand).
BATCH_COST_TOKENS = {"cpu": 32, "cuda": 512}


@dataclass(frozen=True)
class RecordFailure:
    """Why one record got no prediction."""

    reason: str


Outcome = Prediction | RecordFailure
ProgressCallback = Callable[[float], None]
# One batch's model outputs, window by window, a failure where a window's forward failed.
BatchOutputs = list[Mapping[str, np.ndarray] | RecordFailure]


@dataclass(frozen=True)
class _Item:
    record: int
    window: int
    ids: Sequence[int]


class Engine:
    """Runs one task's model over batches of records."""

    def __init__(
        self,
        task: Task,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = None,
        max_batch_attention: int = DEFAULT_MAX_BATCH_ATTENTION,
    ) -> None:
        self.task = task
        self.loaded = task.model
        device = self.loaded.device_type
        self.max_batch_tokens = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(
            device, DEFAULT_MAX_BATCH_TOKENS["cuda"]
        )
        if min(batch_size, self.max_batch_tokens, max_batch_attention) < 1:
            raise NlpkitError("batch size and token budgets must be positive")
        self.batch_size = batch_size
        self.max_batch_attention = max_batch_attention
        self.batch_cost = BATCH_COST_TOKENS.get(device, BATCH_COST_TOKENS["cuda"])
        self.pad_id = self.loaded.tokenizer.pad_token_id or 0
        self._pool: ThreadPoolExecutor | None = None  # made on the first call with batches to run side by side

    def predict(self, records: Sequence[Record], progress: ProgressCallback | None = None) -> list[Prediction]:
        """Predictions for every record, in order; the first failure raises NlpkitError."""
        outcomes = self.run(records, progress)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, RecordFailure):
                raise NlpkitError(f"record {index + 1}: {outcome.reason}")
        return outcomes  # type: ignore[return-value]  # all are Predictions past the loop

    def run(self, records: Sequence[Record], progress: ProgressCallback | None = None) -> list[Outcome]:
        """A Prediction or a RecordFailure for every record, in input order."""
        return self.start(records).outcomes(progress)

    def start(self, records: Sequence[Record]) -> EngineRun:
        """Cut the records into batches and queue them for the model; :meth:`EngineRun.outcomes` collects them.

        The batches start at once on the engine's threads and the caller is free until it asks for the
        outcomes: a worker cuts its next poll and stores its last one meanwhile, and the next call's
        batches queue behind these, so the model never waits between calls. (On 2 Zen 4 cores this kept
        a stream 3-5% closer to its engine on OpenVINO and 3% on fp32 torch; on a GPU the tokenizer
        and the database would otherwise leave it idle.)"""
        if not records:  # tasks are never asked to cut an empty batch
            return EngineRun(self.task, records, [], {}, [], [])
        windows, failures = self._cut(records)
        items = [
            _Item(r, w, window.input_ids)
            for r, record_windows in enumerate(windows)
            if r not in failures
            for w, window in enumerate(record_windows)
        ]
        batches = self._batches(items)
        return EngineRun(self.task, records, windows, failures, batches, self._forwarded(batches))

    def _cut(self, records: Sequence[Record]) -> tuple[list[list[Window]], dict[int, RecordFailure]]:
        """Windows for every record: one batched tokenizer call, or one call per record if that fails."""
        try:
            return self.task.windows(records), {}
        except Exception:  # find the record(s) to blame rather than fail them all
            windows: list[list[Window]] = []
            failures: dict[int, RecordFailure] = {}
            for index, record in enumerate(records):
                try:
                    windows.append(self.task.windows([record])[0])
                except Exception as exc:
                    windows.append([])
                    failures[index] = RecordFailure(f"tokenization failed: {type(exc).__name__}: {exc}")
            return windows, failures

    def _batches(self, items: list[_Item]) -> list[list[_Item]]:
        """Longest first, cut into batches within the count limit and the padded-token and attention
        budgets so that the padded tokens, plus a batch's own cost (``BATCH_COST_TOKENS``), are fewest.

        Why not fill each batch in turn: among the few hundred windows of one worker poll the longest
        are far apart, and a batch filled greedily pads its short members to its long first one (on
        CoNLL sentences in polls of 512 that computed 14% more tokens than the sentences hold; cut
        this way, 3%). The best cut of the sorted windows is a shortest path: for each prefix, the
        cheapest way to end it, found over the at most ``batch_size`` places its last batch can start
        (4 ms for a poll of 512 sentences on 2 Zen 3 cores, against about 2 s in the model).
        A backend that runs several batches at once gets at least that many where there are windows enough.
        """
        ordered = sorted(items, key=lambda item: len(item.ids), reverse=True)
        # Where batches run side by side, at least that many: one batch alone would leave threads idle.
        most = min(self.batch_size, -(-len(ordered) // self.loaded.parallel_batches))
        lengths = [len(item.ids) for item in ordered]
        cost = [0] * (len(ordered) + 1)  # cost[end]: the cheapest cut of ordered[:end], batch costs included
        start = [0] * (len(ordered) + 1)  # where the last batch of that cut starts
        max_tokens, max_attention = self.max_batch_tokens, self.max_batch_attention  # locals: the loop is hot
        for end in range(1, len(ordered) + 1):
            best, best_first = cost[end - 1] + lengths[end - 1], end - 1  # a batch of one always fits
            for first in range(end - 2, max(end - most, 0) - 1, -1):
                longest = lengths[first]
                padded = (end - first) * longest
                if padded > max_tokens or padded * longest > max_attention:
                    break  # starting earlier only adds windows at least as long
                if cost[first] + padded < best:
                    best, best_first = cost[first] + padded, first
            cost[end], start[end] = best + self.batch_cost, best_first
        batches: list[list[_Item]] = []
        end = len(ordered)
        while end:
            batches.append(ordered[start[end] : end])
            end = start[end]
        return batches[::-1]

    def _forwarded(self, batches: list[list[_Item]]) -> list[Future[BatchOutputs]]:
        """Each batch's outputs to come, in order, queued on the engine's threads: as many threads as batches
        the backend runs at once, one where a batch takes them all (its own threads, or a GPU)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.loaded.parallel_batches, thread_name_prefix="nlpkit-batch")
        return [self._pool.submit(self._forward_isolating, batch) for batch in batches]

    def _forward_isolating(self, batch: list[_Item]) -> BatchOutputs:
        try:
            return list(self._forward(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [RecordFailure(f"model failed: {type(exc).__name__}: {exc}")]
            return [result for item in batch for result in self._forward_isolating([item])]

    def _forward(self, batch: list[_Item]) -> list[Mapping[str, np.ndarray]]:
        lengths = [len(item.ids) for item in batch]
        input_ids = np.full((len(batch), max(lengths)), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for row, item in enumerate(batch):
            input_ids[row, : lengths[row]] = item.ids
            attention_mask[row, : lengths[row]] = 1
        output = self.loaded.forward(input_ids, attention_mask)
        arrays = {key: output[key] for key in self.task.output_keys}
        if self.task.token_level_outputs:
            return [{key: value[row, :length] for key, value in arrays.items()} for row, length in enumerate(lengths)]
        return [{key: value[row] for key, value in arrays.items()} for row in range(len(batch))]


@dataclass
class EngineRun:
    """One :meth:`Engine.start` call's records on their way through the model."""

    task: Task
    records: Sequence[Record]
    windows: list[list[Window]]
    failures: dict[int, RecordFailure]  # records failed before the model (tokenizing); the model's add to them
    batches: list[list[_Item]]
    forwarded: list[Future[BatchOutputs]]  # each batch's outputs to come

    def outcomes(self, progress: ProgressCallback | None = None) -> list[Outcome]:
        """A Prediction or a RecordFailure for every record, in input order, once every batch is through."""
        windows, failures = self.windows, self.failures
        outputs: list[list[Mapping[str, np.ndarray] | None]] = [[None] * len(w) for w in windows]
        for batch, forwarded in zip(self.batches, self.forwarded, strict=True):
            for item, result in zip(batch, forwarded.result(), strict=True):
                if isinstance(result, RecordFailure):
                    failures.setdefault(item.record, result)
                else:
                    outputs[item.record][item.window] = result
            if progress is not None:  # in records: a record of n windows advances 1/n per window
                progress(sum(1 / len(windows[item.record]) for item in batch))
        return [
            failures[r] if r in failures else _postprocessed(self.task, record, windows[r], outputs[r])
            for r, record in enumerate(self.records)
        ]

    def cancel(self) -> None:
        """Drop the batches not yet started (the outcomes are no longer wanted): a worker told to stop
        leaves its next poll to be read again rather than finish it."""
        for forwarded in self.forwarded:
            forwarded.cancel()


def _postprocessed(
    task: Task, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray] | None]
) -> Outcome:
    try:
        return task.postprocess(record, windows, outputs)  # type: ignore[arg-type]
    except Exception as exc:
        return RecordFailure(f"postprocessing failed: {type(exc).__name__}: {exc}")
