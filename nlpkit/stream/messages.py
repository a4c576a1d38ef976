"""Turning raw Kafka message bytes into task input, or into a reason why not.

A value is UTF-8 JSON (an object such as ``{"id": ..., "text": ...}``; ``task`` may
pick the task) or plain UTF-8 text. Only a value that starts with ``{`` is read as JSON,
and then it must be valid; anything else is text, so a review that opens with
"[SPOILERS]" is classified like any other. A null value is a tombstone (a deletion
marker on a compacted topic), not a message: the worker decides what becomes of it
before anything here is asked.

A key is bytes: a UUID's 16 bytes, a Schema Registry frame (which starts with a zero
byte) or text. It is stored as it came; where it is text (:func:`key_text`) it also
becomes the record's id unless the JSON names one. Nothing here raises on bad input:
every failure is a :class:`Rejected` whose reason ends up on a dead letter.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_MESSAGE_BYTES = 100_000
MAX_ID_CHARS = 255
TOMBSTONE_REASON = "tombstone (null value)"
# The W3C trace context: a trace started at the producer continues through the stored row and the result.
DEFAULT_PASS_HEADERS = ("traceparent", "tracestate")
# A \u escape of a UTF-16 surrogate: json.loads pairs up proper ones, but a lone one becomes a
# str that no UTF-8 consumer (the database driver, Kafka headers) can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Decoded:
    """A message's fields (not yet validated against a task), its id and task if given, and the
    Schema Registry id of the schema it was decoded with (None for JSON and text)."""

    fields: dict[str, Any]
    record_id: str | None
    task: str | None
    schema_id: int | None = None


@dataclass(frozen=True)
class Rejected:
    """Why a message cannot be processed, and at which stage it failed."""

    reason: str
    stage: str = "decode"


def decode_message(
    value: bytes | None, key: bytes | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Decoded | Rejected:
    if value is None:
        return Rejected(TOMBSTONE_REASON, stage="tombstone")
    if not value:
        return Rejected("empty value (0 bytes)")
    if len(value) > max_bytes:
        return Rejected(f"message is {len(value)} bytes, over the limit of {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    if not text.strip():
        return Rejected("value holds only whitespace")
    key_id = key_text(key)
    if key_id is not None and len(key_id) > MAX_ID_CHARS:
        key_id = None  # too long to be an id; the key itself is still stored as it came
    if not text.lstrip().startswith("{"):
        return Decoded({"text": text}, key_id, None)
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Rejected(f"invalid JSON: {getattr(exc, 'msg', 'nested too deeply')}")
    except ValueError as exc:  # an integer over Python's 4,300-digit limit; drop its advice to raise the limit
        return Rejected(f"invalid JSON: {str(exc).split(';')[0]}")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(payload):
        return Rejected("invalid JSON: a \\u escape of a lone surrogate (U+D800 to U+DFFF) is not a character")
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


def _has_lone_surrogate(payload: Any) -> bool:
    """Whether any string in a decoded JSON value (keys included) holds an unpaired surrogate."""
    pending = [payload]  # iteratively: json.loads accepts nesting deeper than a recursive walk could follow
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def key_text(key: bytes | None) -> str | None:
    """A message key as text where it is text: valid UTF-8 without NUL. None for a binary key
    (a UUID's bytes, a Schema Registry frame), which is kept only as the bytes it is."""
    if key is None or b"\x00" in key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def bytes_as_json(raw: bytes | None, *, parse_json: bool = False) -> Any:
    """Kafka bytes (a key, a header, a value) in JSON: the text where they are text (UTF-8 without
    NUL; with ``parse_json``, the JSON it holds), else ``{"base64": ...}``, a marker no text can be
    mistaken for, so binary bytes come back byte for byte."""
    if raw is None:
        return None
    text = key_text(raw)
    if text is None:
        return {"base64": base64.b64encode(raw).decode("ascii")}
    if parse_json:
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
