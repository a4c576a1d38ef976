"""Processing apart from transport: messages from anywhere into rows, one hook call per task."""

from __future__ import annotations

import json

import pluggy

from nlpkit import Engine, hookimpl, hookspecs, load_task
from nlpkit.hookspecs import StoredBatch
from nlpkit.stream.processing import BatchProcessor, StandInMessage
from nlpkit.stream.sinks.database import DatabaseSink
from nlpkit.testing import save_tiny_distilbert


class Recorder:
    def __init__(self) -> None:
        self.batches: list[StoredBatch] = []

    @hookimpl
    def predictions_stored(self, batch) -> None:
        self.batches.append(batch)


def message(offset: int, value: dict | bytes | None, partition: int = 0) -> StandInMessage:
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return StandInMessage("reviews", partition, offset, f"k{offset}".encode(), raw, 1_700_000_000_000)


def test_each_task_is_reported_with_its_own_rows_and_model(tmp_path, database):
    sentiment = save_tiny_distilbert(tmp_path / "sentiment-model", labels=["negative", "positive"])
    emotions = save_tiny_distilbert(tmp_path / "emotion-model", labels=["joy", "anger"])
    processor = BatchProcessor(
        {
            "sentiment": Engine(load_task("sentiment", str(sentiment))),
            "multilabel": Engine(load_task("multilabel", str(emotions))),
        }
    )
    recorder = Recorder()
    manager = pluggy.PluginManager("nlpkit")
    manager.add_hookspecs(hookspecs)
    manager.register(recorder)
    messages = [
        message(0, {"text": "a fine film"}),  # no task field: the first task
        message(1, {"text": "so happy", "task": "multilabel"}),
        message(2, {"text": "", "task": "multilabel"}),  # a dead letter of the multilabel task
        message(3, None),  # a tombstone: no task at all
        message(4, b"plain text, sentiment"),
    ]

    batch = processor.process(messages)
    DatabaseSink(database, hook=manager.hook).write(batch, processor.models)

    reported = {stored.task: stored for stored in recorder.batches}
    assert len(recorder.batches) == 2 and set(reported) == {"sentiment", "multilabel"}
    assert reported["sentiment"].model == str(sentiment) and reported["multilabel"].model == str(emotions)
    assert [row["source_offset"] for row in reported["sentiment"].predictions] == [0, 4]
    assert [row["source_offset"] for row in reported["multilabel"].predictions] == [1]
    assert [row["source_offset"] for row in reported["multilabel"].dead_letters] == [2]
    assert reported["sentiment"].dead_letters == []
    assert [row["source_offset"] for row in batch.tombstones] == [3]
    assert all(stored.topic_offsets == {("reviews", 0): 5} for stored in recorder.batches)


def test_passed_headers_are_the_named_ones_as_text_and_a_header_without_a_value_is_kept():
    from nlpkit.stream.processing import passed_headers

    traced = StandInMessage(
        "t", 0, 0, None, b"x", 0, [("traceparent", b"00-ab-cd-01"), ("tracestate", None), ("secret", b"no")]
    )
    assert passed_headers(traced, ("traceparent", "tracestate")) == {"traceparent": "00-ab-cd-01", "tracestate": ""}
    assert passed_headers(traced, ()) is None
    assert passed_headers(message(0, b"plain"), ("traceparent",)) is None


def test_a_batch_less_the_partitions_taken_away_keeps_only_the_rest(tmp_path):
    model = save_tiny_distilbert(tmp_path / "model", labels=["negative", "positive"])
    processor = BatchProcessor({"sentiment": Engine(load_task("sentiment", str(model)))})
    messages = [message(7, {"text": "fine"}), message(3, {"text": "bad"}, 1), message(4, {"text": ""}, 1)]
    messages.append(message(5, None, partition=1))
    pending = processor.start(messages)  # its records are with the model while the worker goes on
    batch = pending.finish()
    assert (len(batch.predictions), len(batch.dead_letters), len(batch.tombstones)) == (2, 1, 1)

    kept = batch.without({("reviews", 1)})
    assert [row["source_offset"] for row in kept.predictions] == [7]
    assert kept.dead_letters == [] and kept.tombstones == []
    assert kept.next_offsets == {("reviews", 0): 8}
    assert list(kept.messages) == [("reviews", 0, 7)]
    assert len(batch.predictions) == 2  # the batch itself is left as it was
