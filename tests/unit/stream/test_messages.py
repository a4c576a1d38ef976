"""Decoding raw message bytes: everything malformed becomes a reason, nothing raises."""

from __future__ import annotations

import json

import pytest

from nlpkit.stream.messages import Decoded, Rejected, decode_message


def test_json_object_with_id():
    decoded = decode_message(json.dumps({"id": 7, "text": "good"}).encode(), b"key-1")
    assert decoded == Decoded({"id": 7, "text": "good"}, "7", None)


def test_plain_text_keeps_the_key_as_id():
    assert decode_message("ünïcode text".encode(), b"k") == Decoded({"text": "ünïcode text"}, "k", None)


@pytest.mark.parametrize(
    ("key", "record_id"),
    [
        (b"\x00\x00\x00\x00\x07\x02k", None),  # a Schema Registry frame: magic byte 0, schema id, payload
        (bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0"), None),  # a UUID's 16 bytes
        (b"\xff\xfe", None),  # not UTF-8
        (b"k" * 256, None),  # text, but too long for an id
        ("clé".encode(), "clé"),
    ],
)
def test_only_a_text_key_becomes_the_record_id_and_no_key_rejects_a_message(key, record_id):
    decoded = decode_message(b"a fine film", key)
    assert decoded == Decoded({"text": "a fine film"}, record_id, None)


def test_task_field_routes():
    assert decode_message(b'{"text": "x", "task": "sentiment"}', None).task == "sentiment"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone (null value)"),
        (b"", "empty value (0 bytes)"),
        (b"   ", "value holds only whitespace"),
        (b"\xff\xfe bad", "not valid UTF-8"),
        (b'{"text": "unterminated', "invalid JSON"),
        (b'{"text": "x", "task": 3}', "field 'task' must be a string"),
        (b'{"text": "x", "id": {"a": 1}}', "field 'id' must be a string or number"),
        (b"x" * 101, "over the limit of 100"),
        (b'{"a": ' + b"[" * 100_000, "invalid JSON"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(value, reason):
    result = decode_message(value, None, max_bytes=100 if value == b"x" * 101 else 1_000_000)
    assert isinstance(result, Rejected)
    assert reason in result.reason
