"""Isolating rows the database (or its driver) refuses, on a real SQLite database."""

from __future__ import annotations

from nlpkit.store import utcnow
from nlpkit.store.queries import PredictionFilter, count_predictions
from nlpkit.stream.sinks.database import write_isolating


def prediction(offset: int, text: str) -> dict:
    return {
        "task": "sentiment",
        "model_name": "m",
        "model_revision": "r",
        "backend": "torch",
        "source_topic": "t",
        "source_partition": 0,
        "source_offset": offset,
        "source_key": None,
        "record_id": str(offset),
        "input_text": text,
        "input_extra": None,
        "label": "positive",
        "score": 0.9,
        "output": {"label": "positive"},
        "message_timestamp": None,
        "stored_at": utcnow(),
    }


def test_a_row_the_driver_cannot_encode_is_returned_and_the_rest_stored(database):
    rows = [prediction(offset, f"review {offset}") for offset in range(9)]
    rows[5]["input_text"] = "lone surrogate \udc00"  # sqlite3 raises UnicodeEncodeError for it
    rejected = write_isolating(database, rows, [])
    assert [row["source_offset"] for row, _reason in rejected] == [5]
    assert "database rejected the row" in rejected[0][1]
    assert count_predictions(database, PredictionFilter()) == 8
