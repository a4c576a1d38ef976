"""The engine: order, batching by length and token budget, isolation of failing records."""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from nlpkit.inference.engine import Engine, RecordFailure
from nlpkit.inference.loading import load_model
from nlpkit.tasks.base import Prediction, Record, Window
from nlpkit_plugins.sentiment import SentimentTask

TEXTS = [
    "a good film",
    "terrible",
    "the movie was great and the acting was good , but the story was bad " * 3,
    "fine",
    "what a wonderful , moving and funny film",
]


@pytest.fixture
def task(sentiment_model_dir):
    return SentimentTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))


def records(texts):
    return [Record({"text": text}) for text in texts]


def test_results_come_back_in_input_order_whatever_the_batching(task):
    one_at_a_time = [Engine(task, batch_size=1).predict(records([text]))[0] for text in TEXTS]
    batched = Engine(task, batch_size=2).predict(records(TEXTS))
    for single, together in zip(one_at_a_time, batched, strict=True):
        assert single.label == together.label
        assert together.score == pytest.approx(single.score, abs=1e-5)


def test_batches_are_sorted_by_length_and_respect_the_token_budget(task):
    engine = Engine(task, batch_size=3, max_batch_tokens=40)
    items = [window for record_windows in task.windows(records(TEXTS)) for window in record_windows]
    from nlpkit.inference.engine import _Item

    batches = engine._batches([_Item(i, 0, window.input_ids) for i, window in enumerate(items)])
    lengths = [len(item.ids) for batch in batches for item in batch]
    assert lengths == sorted(lengths, reverse=True)
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * len(batch[0].ids) <= 40


def test_long_windows_batch_within_the_attention_budget(task):
    from nlpkit.inference.engine import _Item

    engine = Engine(task, batch_size=64, max_batch_tokens=10**6, max_batch_attention=4 * 100 * 100)
    lengths = [100] * 10 + [20] * 60
    batches = engine._batches([_Item(i, 0, [1] * n) for i, n in enumerate(lengths)])
    # 4 x 100^2 fills the budget; the two long windows left over get a batch of their own rather
    # than padding two short ones to 100; the short ones fit in one.
    assert [len(batch) for batch in batches] == [4, 4, 2, 60]


def test_batches_cut_where_lengths_jump_instead_of_padding_short_windows_to_long_ones(task):
    from nlpkit.inference.engine import _Item

    engine = Engine(task, batch_size=32, max_batch_tokens=10**6)
    lengths = [100, 60, 60, 60] + [20] * 30
    batches = engine._batches([_Item(i, 0, [1] * n) for i, n in enumerate(lengths)])
    # Filled in turn, the first batch would pad 28 short windows to 100 (3,240 tokens for 880).
    assert [[len(item.ids) for item in batch] for batch in batches] == [[100], [60] * 3, [20] * 30]
    padded = sum(len(batch) * len(batch[0].ids) for batch in batches)
    assert padded == sum(lengths) and 3 * engine.batch_cost < 3240 - padded


def _fits(engine: Engine, count: int, longest: int) -> bool:
    padded = count * longest
    return count == 1 or (padded <= engine.max_batch_tokens and padded * longest <= engine.max_batch_attention)


def _cheapest_cut(engine: Engine, lengths: Sequence[int]) -> int:
    """By brute force: the least padded tokens plus batch costs over every cut of the sorted lengths into
    consecutive batches within the budgets."""

    @functools.cache
    def from_(begin: int) -> int:
        if begin == len(lengths):
            return 0
        counts = range(1, min(engine.batch_size, len(lengths) - begin) + 1)
        return min(
            count * lengths[begin] + engine.batch_cost + from_(begin + count)
            for count in counts
            if _fits(engine, count, lengths[begin])
        )

    return from_(0)


def test_the_cut_costs_the_least_of_every_way_to_cut_the_sorted_windows_within_the_budgets(task):
    from nlpkit.inference.engine import _Item

    engine = Engine(task, batch_size=4, max_batch_tokens=200, max_batch_attention=4 * 60 * 60)
    rng = random.Random(7)
    for _ in range(200):
        lengths = sorted((rng.randint(1, 90) for _ in range(rng.randint(1, 11))), reverse=True)
        batches = engine._batches([_Item(i, 0, [1] * n) for i, n in enumerate(lengths)])
        assert all(_fits(engine, len(batch), len(batch[0].ids)) for batch in batches)
        cost = sum(len(batch) * len(batch[0].ids) + engine.batch_cost for batch in batches)
        assert cost == _cheapest_cut(engine, lengths), lengths


class ExplodingTask(SentimentTask):
    """Fails in the model for any text containing 'boom', the way a poison record would."""

    def windows(self, recs: Sequence[Record]) -> list[list[Window]]:
        windows = super().windows(recs)
        return [
            [Window([*w.input_ids[:-1], 10**6, w.input_ids[-1]], w.context) for w in ws]
            if "boom" in record.fields["text"]
            else ws
            for record, ws in zip(recs, windows, strict=True)
        ]


def test_a_record_that_breaks_the_model_fails_alone(sentiment_model_dir):
    task = ExplodingTask(load_model(str(sentiment_model_dir), SentimentTask.model_class))
    outcomes = Engine(task, batch_size=8).run(records(["good", "boom goes the film", "bad"]))
    assert isinstance(outcomes[0], Prediction) and isinstance(outcomes[2], Prediction)
    assert isinstance(outcomes[1], RecordFailure)
    assert "model failed" in outcomes[1].reason


class BadPostprocess(SentimentTask):
    def postprocess(self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]):
        if record.fields["text"] == "odd":
            raise ValueError("cannot handle this one")
        return super().postprocess(record, windows, outputs)


def test_postprocessing_failure_is_isolated_and_predict_raises(sentiment_model_dir):
    task = BadPostprocess(load_model(str(sentiment_model_dir), SentimentTask.model_class))
    outcomes = Engine(task).run(records(["good", "odd"]))
    assert isinstance(outcomes[0], Prediction)
    assert outcomes[1] == RecordFailure("postprocessing failed: ValueError: cannot handle this one")
    from nlpkit.errors import NlpkitError

    with pytest.raises(NlpkitError, match="record 2"):
        Engine(task).predict(records(["good", "odd"]))
