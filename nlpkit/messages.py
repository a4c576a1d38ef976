"""Turning raw Kafka message bytes into task input, or into a reason why not.

A value is UTF-8 JSON (an object such as ``{"id": ..., "text": ...}``; ``task`` may
pick the task) or plain UTF-8 text. The key, when present, is kept and becomes the
record's id unless the JSON names one. Nothing here raises on bad input: every
failure is a :class:`Rejected` whose reason ends up on a dead letter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_MESSAGE_BYTES = 100_000
MAX_ID_CHARS = 255


@dataclass(frozen=True)
class Decoded:
    """A message's fields (not yet validated against a task) and its id and task, if given."""

    fields: dict[str, Any]
    record_id: str | None
    task: str | None


@dataclass(frozen=True)
class Rejected:
    """Why a message cannot be processed, and at which stage it failed."""

    reason: str
    stage: str = "decode"


def decode_message(
    value: bytes | None, key: bytes | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Decoded | Rejected:
    if value is None or not value.strip():
        return Rejected("empty message")
    if len(value) > max_bytes:
        return Rejected(f"message is {len(value)} bytes, over the limit of {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    key_id = decode_key(key)
    if text.lstrip()[:1] not in ("{", "["):
        return Decoded({"text": text}, key_id, None)
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Rejected(f"invalid JSON: {getattr(exc, 'msg', 'nested too deeply')}")
    if not isinstance(payload, dict):
        return Rejected(f"JSON message must be an object, not {type(payload).__name__}")
    task = payload.get("task")
    if task is not None and not isinstance(task, str):
        return Rejected("field 'task' must be a string")
    record_id = payload.get("id", key_id)
    if record_id is not None:
        if isinstance(record_id, (dict, list)):
            return Rejected("field 'id' must be a string or number")
        record_id = str(record_id)
        if len(record_id) > MAX_ID_CHARS:
            return Rejected(f"field 'id' is longer than {MAX_ID_CHARS} characters")
    return Decoded(payload, record_id, task)


def decode_key(key: bytes | None) -> str | None:
    """A message key as text; bytes that are not UTF-8 are kept visible as escapes."""
    if key is None:
        return None
    return key.decode("utf-8", errors="backslashreplace")
