"""Hostile input: random bytes, huge and deeply nested values, odd Unicode and SQL-looking text.

Anyone who can write to a topic, or hand nlpkit a data file, controls these bytes. The
contract under test is the one the rest of nlpkit relies on:

- ``decode_message`` never raises: every value becomes ``Decoded`` (with the text kept
  exactly) or ``Rejected`` with a reason, and whatever it decodes can be stored;
- the file readers (``read_rows`` for training data, ``input_lines`` for ``nlpkit
  predict``) raise nothing but ``DataFormatError`` naming the file and the line, which the
  CLI prints as one line instead of a traceback;
- through the real worker path, on SQLite and PostgreSQL, every message becomes exactly
  one prediction or one dead letter, text is stored byte for byte, dead letters keep the
  raw bytes, and SQL-looking text is data, never SQL. A message the database itself
  refuses (PostgreSQL text cannot hold NUL) becomes a dead letter of its own while the
  rest of its batch is stored.

The ``@example`` cases are the inputs that once crashed something; hypothesis adds new ones.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from nlpkit.errors import DataFormatError
from nlpkit.store import Database, DeadLetterRow, PredictionRow, migrated_database
from nlpkit.stream.messages import DEFAULT_MAX_MESSAGE_BYTES, MAX_ID_CHARS, Decoded, Rejected, decode_message
from nlpkit.tasks.readers import input_lines, read_rows
from nlpkit.testing import run_through_worker

SQL_TEXT = [
    "'; DROP TABLE predictions; --",
    "Robert'); DELETE FROM dead_letters;--",
    "' OR '1'='1",
    "1; UPDATE predictions SET label = 'pwned'; --",
    "$$; TRUNCATE dead_letters; $$",
    '\\"; DROP TABLE models; --',
    "%' AND 1=0 UNION SELECT raw_value FROM dead_letters --",
]
ODD_CHARACTERS = [
    "\x00",  # NUL: fine in SQLite, refused by PostgreSQL text columns
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\ufeff",  # byte order mark
    "\u2028",  # line separator (not a line break for files)
    "\x85",
    "\x1c",  # str.strip() whitespace that bytes.strip() keeps
    "\xa0",
    "\r",
    "\n",
    "\t",
    "\x1b[31m",
    "\x7f",
    "\u0301",  # combining acute accent
    "e\u0301\u0336\u0336",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # one family emoji of five code points
    "\U0001f1fa\U0001f1f8",  # a flag: two regional indicators
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\ufdfa",
    "\\",
    '"',
    "'",
]
# Byte sequences that are not UTF-8: a surrogate encoded as UTF-8 (CESU-8), an overlong NUL,
# stray continuation and invalid bytes, a code point past U+10FFFF, a truncated sequence.
NOT_UTF8 = [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\x80", b"\xff", b"\xfe", b"\xf4\x90\x80\x80", b"\xe2\x82"]

fragments = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(ODD_CHARACTERS),
    st.sampled_from(SQL_TEXT),
)
hostile_text = st.lists(fragments, max_size=6).map("".join)
keys = st.one_of(
    st.none(),
    st.binary(max_size=16),
    st.sampled_from([s.encode() for s in (*SQL_TEXT, "\x00", "k\x00ey", "\u202ekey")]),
    hostile_text.map(str.encode),
)


def starts_like_json(text: str) -> bool:
    return text.lstrip().startswith("{")


def key_text(key: bytes | None) -> str | None:
    """The text rendering a worker stores beside a key's bytes: the key where it is UTF-8 without NUL."""
    if key is None or b"\x00" in key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def key_id(key: bytes | None) -> str | None:
    """The record id a key gives a message without an "id" field: its text, if short enough for an id."""
    text = key_text(key)
    return text if text is not None and len(text) <= MAX_ID_CHARS else None


def storable(value: object) -> bool:
    """Whether a decoded value can go to a database or Kafka at all: every string encodes as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- (a) the message decoder ----------------------------------------------------------------------

hostile_bytes = st.one_of(
    st.binary(max_size=200),
    hostile_text.map(str.encode),
    st.lists(
        st.one_of(
            st.sampled_from(NOT_UTF8),
            st.sampled_from([b"{", b"}", b"[", b"]", b'{"text": "', b'"}', b"\\ud800", b"\\udc00", b"\\u0000"]),
            hostile_text.map(str.encode),
        ),
        max_size=8,
    ).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), hostile_bytes), key=keys, max_bytes=st.sampled_from([16, 200, 100_000]))
@example(value=b'{"text": "x", "id": ' + b"1" * 5000 + b"}", key=None, max_bytes=100_000)  # int past 4,300 digits
@example(value=b'{"text": "lone \\ud800 surrogate"}', key=None, max_bytes=100_000)
@example(value=b'{"text": "ok", "id": "\\udc00"}', key=None, max_bytes=100_000)
@example(value=b'{"text": "ok", "task": "\\udfff"}', key=None, max_bytes=100_000)
@example(value=b'{"a": ' + b"[" * 50_000, key=None, max_bytes=100_000)
@example(value=b"\xed\xa0\x80", key=b"\xed\xa0\x80", max_bytes=100_000)
def test_decode_never_raises_and_every_rejection_has_a_reason(value, key, max_bytes):
    result = decode_message(value, key, max_bytes)

    assert isinstance(result, Decoded | Rejected)
    if isinstance(result, Rejected):
        assert isinstance(result.reason, str) and result.reason.strip()
        assert result.stage
        return
    assert value is not None and len(value) <= max_bytes
    assert isinstance(result.fields, dict)
    assert result.record_id is None or (isinstance(result.record_id, str) and len(result.record_id) <= MAX_ID_CHARS)
    assert storable(result.fields) and storable(result.record_id) and storable(result.task)
    text = value.decode("utf-8")  # anything decoded was UTF-8
    if not starts_like_json(text):
        assert result.fields == {"text": text}


@settings(max_examples=200, deadline=None)
@given(text=hostile_text, key=keys)
@example(text="'; DROP TABLE predictions; --", key=b"Robert'); DELETE FROM dead_letters;--")
@example(text="\u202eevil\u200f \x00 e\u0301 \U0001f600", key=b"\x00")
@example(text="a review", key=b"\xff" * 64)  # binary: no id, and never a reason to reject the message
@example(text="a review", key=b"k" * 256)  # text, but too long for an id: the message is still good
@example(text="a review", key=b"\x00\x00\x00\x00\x01\x02")  # a Schema Registry frame
def test_plain_text_is_decoded_exactly(text, key):
    value = text.encode("utf-8")
    result = decode_message(value, key)

    if not text.strip():
        assert isinstance(result, Rejected) and ("empty" in result.reason or "whitespace" in result.reason)
    elif starts_like_json(text):  # a value that starts like JSON is read as JSON (see the next test)
        assert isinstance(result, Rejected | Decoded)
    else:
        assert isinstance(result, Decoded)
        assert result.fields == {"text": text}
        assert result.fields["text"].encode("utf-8") == value
        assert (result.record_id, result.task) == (key_id(key), None)


@settings(max_examples=100, deadline=None)
@given(rest=hostile_text, opening=st.sampled_from(["{sic} ", "  {", "{"]))
def test_text_that_only_starts_like_a_json_object_is_rejected_as_invalid_json(rest, opening):
    # The documented contract: a value starting with { is a JSON object (a producer's broken
    # JSON must not be classified as if it were a review).
    text = opening + "\x01" + rest  # a control character is never valid JSON there
    result = decode_message(text.encode(), None)
    assert isinstance(result, Rejected) and result.reason.startswith("invalid JSON")


@settings(max_examples=100, deadline=None)
@given(rest=hostile_text, opening=st.sampled_from(["[SPOILERS] ", "  [1] ", "[", "[1, 2]"]))
def test_text_that_opens_with_a_bracket_is_text(rest, opening):
    # A JSON array could never be a message, so "[SPOILERS] great film" is a review to classify.
    text = opening + rest
    result = decode_message(text.encode(), None)
    if text.strip():
        assert isinstance(result, Decoded) and result.fields == {"text": text}
    else:
        assert isinstance(result, Rejected)


@settings(max_examples=200, deadline=None)
@given(
    text=hostile_text,
    record_id=st.one_of(st.none(), hostile_text, st.integers(-(10**30), 10**30)),
    note=st.one_of(st.none(), st.sampled_from(SQL_TEXT), hostile_text),
    ascii_only=st.booleans(),
    key=keys,
)
@example(text="\U0001f600", record_id=None, note=None, ascii_only=True, key=None)  # sent as a surrogate-pair escape
@example(text="nul \x00 inside", record_id="id\x00", note="'; DROP TABLE predictions; --", ascii_only=False, key=None)
def test_a_json_text_field_is_decoded_exactly(text, record_id, note, ascii_only, key):
    payload = {"text": text}
    if record_id is not None:
        payload["id"] = record_id
    if note is not None:
        payload["note"] = note
    value = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8")
    result = decode_message(value, key)

    expected_id = str(record_id) if record_id is not None else key_id(key)
    if expected_id is not None and len(expected_id) > MAX_ID_CHARS:
        assert isinstance(result, Rejected) and "longer than" in result.reason
        return
    assert isinstance(result, Decoded)
    assert result.fields["text"] == text
    assert result.fields["text"].encode("utf-8") == text.encode("utf-8")
    assert result.fields == payload
    assert result.record_id == expected_id


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 49_000), balanced=st.booleans(), digits=st.integers(1, 20_000))
@example(depth=49_000, balanced=True, digits=4_301)
def test_deep_nesting_and_huge_numbers_are_rejected_never_raised(depth, balanced, digits):
    nested = b'{"text": "deep", "a": ' + b"[" * depth + (b"]" * depth + b"}" if balanced else b"")
    number = b'{"text": "number", "n": ' + b"9" * digits + b"}"
    for value, text in ((nested, "deep"), (number, "number")):
        result = decode_message(value, None)
        assert isinstance(result, Decoded | Rejected)
        if isinstance(result, Decoded):
            assert result.fields["text"] == text
        else:
            assert result.reason.startswith("invalid JSON")
    # How deep json.loads can go depends on the interpreter; how many digits it converts does not.
    assert balanced or isinstance(decode_message(nested, None), Rejected)
    assert isinstance(decode_message(number, None), Decoded if digits <= 4_300 else Rejected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"text": "a\\ud800b"}', None),  # a lone high surrogate
        (b'{"text": "ok", "id": "\\udc00"}', None),  # a lone low surrogate, in the id
        (b'{"text": "ok", "x": [{"\\udbff": 1}]}', None),  # in a nested key
        (b'{"text": "\\ud83d\\ude00"}', "\U0001f600"),  # a proper pair is one character
        (b'{"text": "\\\\ud800"}', "\\ud800"),  # an escaped backslash: six plain characters
    ],
)
def test_lone_surrogate_escapes_are_rejected_proper_pairs_decoded(value, expected):
    result = decode_message(value, None)
    if expected is None:
        assert isinstance(result, Rejected) and "surrogate" in result.reason
    else:
        assert isinstance(result, Decoded) and result.fields["text"] == expected


def test_values_over_the_limit_are_rejected_however_they_are_made():
    for value in (b"x" * (DEFAULT_MAX_MESSAGE_BYTES + 1), ("\U0001f600" * 25_001).encode(), b"\x00" * 100_001):
        result = decode_message(value, None)
        assert isinstance(result, Rejected) and "over the limit" in result.reason


# --- (b) the file readers ---------------------------------------------------------------------------

READER_FRAGMENTS = [
    *NOT_UTF8,
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\t",
    b",",
    b'"',
    b"{",
    b"}",
    b"[",
    b'{"text": "',
    b'"}',
    b"\\u0000",
    b"\\ud800",
    b"\xef\xbb\xbf",  # a UTF-8 byte order mark
    b"text,label\n",
    b"text\tlabel\n",
    b'{"a": ' + b"[" * 5_000,  # deeper than json.loads can follow
    b'{"a": ' + b"9" * 5_000 + b"}",  # an integer past Python's 4,300-digit limit
    b"x" * 140_000,  # one field past csv.field_size_limit()
]
file_contents = st.lists(
    st.one_of(st.sampled_from(READER_FRAGMENTS), st.binary(max_size=24), hostile_text.map(str.encode)), max_size=10
).map(b"".join)
SUFFIXES = [".jsonl", ".csv", ".tsv"]


def universal_lines(content: bytes) -> int:
    return len(re.split(rb"\r\n|\r|\n", content))


def first_bad_line(content: bytes) -> int | None:
    """The line (counted by \\n) of the first byte that is not UTF-8, or None for UTF-8 text."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return content[: exc.start].count(b"\n") + 1
    return None


def check_names_file_and_line(error: DataFormatError, path: Path, content: bytes) -> None:
    message = str(error)
    match = re.fullmatch(rf"{re.escape(str(path))}:(\d+): (.+)", message, flags=re.DOTALL)
    if match is None:
        assert message == f"{path}: empty file, expected a header line", message
        return
    line, detail = int(match[1]), match[2]
    assert 1 <= line <= universal_lines(content), message
    if detail.startswith("not UTF-8"):
        assert line == first_bad_line(content), message


def expected_inputs(text: str) -> list[dict]:
    """What ``nlpkit predict`` should read from a file: each non-blank line, as JSON object or as text."""
    inputs = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        value = None
        if line.strip().startswith("{"):
            try:
                value = json.loads(line.strip())
            except (ValueError, RecursionError):
                pass
        inputs.append(value if isinstance(value, dict) else {"text": line})
    return inputs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(content=file_contents, suffix=st.sampled_from(SUFFIXES))
@example(content=b'{"a": ' + b"[" * 5_000 + b"\n", suffix=".jsonl")
@example(content=b'{"a": ' + b"9" * 5_000 + b"}\n", suffix=".jsonl")
@example(content=b"text,label\n" + b"x" * 140_000 + b",1\n", suffix=".csv")
@example(content=b"text\tlabel\n" + b"x" * 140_000 + b"\t1\n", suffix=".tsv")
@example(content=b'{"text": "ok"}\n' * 2_000 + b'{"text": "\xed\xa0\x80"}\n', suffix=".jsonl")
def test_readers_raise_only_data_format_errors_naming_file_and_line(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("hostile-files") / f"data{suffix}"
    path.write_bytes(content)
    bad_line = first_bad_line(content)

    try:
        rows = list(read_rows(path))
    except DataFormatError as exc:
        check_names_file_and_line(exc, path, content)
    else:
        assert bad_line is None, "a file that is not UTF-8 was read without an error"
        numbers = [number for number, _row in rows]
        assert numbers == sorted(set(numbers)) and all(1 <= n <= universal_lines(content) for n in numbers)
        assert all(isinstance(row, dict) for _number, row in rows)

    try:
        inputs = list(input_lines(str(path)))
    except DataFormatError as exc:
        assert bad_line is not None, f"only undecodable bytes should stop predict input, not: {exc}"
        check_names_file_and_line(exc, path, content)
        assert "not UTF-8" in str(exc)
    else:
        assert bad_line is None, "a file that is not UTF-8 was read without an error"
        assert repr(inputs) == repr(expected_inputs(content.decode("utf-8")))  # repr: NaN != NaN


labelled_rows = st.lists(
    st.tuples(hostile_text, st.sampled_from(["negative", "positive", "0", "1"])), min_size=1, max_size=6
)


@settings(max_examples=100, deadline=None)
@given(rows=labelled_rows, ascii_only=st.booleans())
def test_jsonl_rows_round_trip_exactly(tmp_path_factory, rows, ascii_only):
    path = tmp_path_factory.mktemp("jsonl") / "rows.jsonl"
    records = [
        {"text": text, "label": label, "note": SQL_TEXT[i % len(SQL_TEXT)]} for i, (text, label) in enumerate(rows)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records), encoding="utf-8")

    assert list(read_rows(path)) == list(enumerate(records, start=1))


@settings(max_examples=100, deadline=None)
@given(rows=labelled_rows)
def test_csv_rows_round_trip_exactly(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "rows.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)

    read = list(read_rows(path))
    assert [(row["text"], row["label"]) for _number, row in read] == rows
    assert [row["text"].encode("utf-8") for _number, row in read] == [text.encode("utf-8") for text, _label in rows]


@settings(max_examples=100, deadline=None)
@given(rows=labelled_rows.map(lambda rows: [(re.sub(r"[\t\r\n]", " ", text), label) for text, label in rows]))
def test_tsv_rows_round_trip_exactly_quotes_and_all(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("tsv") / "rows.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")

    assert [(number, row["text"], row["label"]) for number, row in read_rows(path)] == [
        (number, text, label) for number, (text, label) in enumerate(rows, start=2)
    ]


# --- (c) through the worker, into SQLite and PostgreSQL ---------------------------------------------

MAX_BYTES = 8_000  # the worker's limit in these tests: small enough that "huge" stays cheap


@dataclass(frozen=True)
class Sent:
    """One message and what must become of it: a prediction of ``text``, a dead letter, or either."""

    key: bytes | None
    value: bytes | None
    outcome: str  # "prediction", "dead", "either" or "tombstone"
    text: str | None = None
    record_id: str | None = None
    reason: str = ""  # a dead letter's reason must contain this


def plain(text: str, key: bytes | None) -> Sent:
    value = text.encode("utf-8")
    if not text.strip():
        return Sent(key, value, "dead")
    return Sent(key, value, "prediction", text, key_id(key))


def as_json(text: str, record_id, note, task, ascii_only: bool, key: bytes | None) -> Sent:
    payload = {"text": text}
    for name, field in (("id", record_id), ("note", note), ("task", task)):
        if field is not None:
            payload[name] = field
    value = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8")
    expected_id = str(record_id) if record_id is not None else key_id(key)
    # In the order the worker checks: decode (the id), route (the task), validate (the text).
    if expected_id is not None and len(expected_id) > MAX_ID_CHARS:
        return Sent(key, value, "dead", reason="longer than")
    if task and task != "sentiment":  # "" means the default task
        return Sent(key, value, "dead", reason="not served")
    if not text.strip():
        return Sent(key, value, "dead", reason="empty")
    return Sent(key, value, "prediction", text, expected_id)


def not_utf8(text: str, bad: bytes, where: int, key: bytes | None) -> Sent:
    raw = text.encode("utf-8")
    cut = where % (len(raw) + 1)
    return Sent(key, raw[:cut] + bad + raw[cut:], "dead", reason="not valid UTF-8")


def oversized(text: str, padding: int) -> Sent:
    return Sent(None, (text + "x" * padding).encode("utf-8"), "dead", reason="over the limit")


def nested(depth: int) -> Sent:
    value = b'{"text": "deep", "a": ' + b"[" * depth + b"]" * depth + b"}"
    outcome = "prediction" if depth <= 300 else "either"
    return Sent(None, value, outcome, "deep")


def numbered(digits: int) -> Sent:
    value = b'{"text": "number", "n": ' + b"9" * digits + b"}"
    if digits > 4_300:
        return Sent(None, value, "dead", reason="invalid JSON")
    return Sent(None, value, "prediction", "number")


messages = st.one_of(
    st.builds(plain, hostile_text.filter(lambda text: not starts_like_json(text)), keys),
    st.builds(
        as_json,
        hostile_text,
        st.one_of(st.none(), hostile_text, st.integers(-(10**18), 10**18)),
        st.one_of(st.none(), st.sampled_from(SQL_TEXT), hostile_text),
        st.one_of(st.none(), st.just("sentiment"), st.just(""), st.sampled_from(SQL_TEXT), hostile_text),
        st.booleans(),
        keys,
    ),
    st.builds(not_utf8, hostile_text, st.sampled_from(NOT_UTF8), st.integers(0, 10_000), keys),
    st.builds(lambda value, key: Sent(key, value, "either"), st.binary(max_size=64), keys),
    st.builds(oversized, hostile_text, st.integers(MAX_BYTES + 1, MAX_BYTES * 2)),
    st.builds(nested, st.integers(1, 3_900)),
    st.builds(numbered, st.integers(1, 7_900)),
    st.sampled_from(
        [
            Sent(None, None, "tombstone"),
            Sent(b"\x00\x00\x00\x00\x05deleted", None, "tombstone"),  # a tombstone with a Schema Registry key
            Sent(None, b"", "dead", reason="empty value (0 bytes)"),
            Sent(None, b'{"text": "lone \\ud800 surrogate"}', "dead", reason="surrogate"),
            Sent(None, b'{"text": "ok", "id": "\\udc00"}', "dead", reason="surrogate"),
            Sent(None, b'{"text": "\\ud83d\\ude00"}', "prediction", "\U0001f600"),
            Sent(None, b'{"text": "nul \\u0000 escaped"}', "prediction", "nul \x00 escaped"),
        ]
    ),
)


def on_database(sent: Sent, dialect: str) -> Sent:
    """What PostgreSQL changes: text columns refuse NUL, so such a prediction must become a dead letter."""
    stored_text = (sent.text or "", sent.record_id or "", key_text(sent.key) or "")
    if dialect == "postgresql" and sent.outcome == "prediction" and any("\x00" in s for s in stored_text):
        return Sent(sent.key, sent.value, "dead", reason="database")
    return sent


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_database(request, tmp_path_factory):
    """One database per dialect for all examples (each example writes to a topic of its own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('hostile-db') / 'nlpkit.db'}"
        name = None
    else:
        server = request.getfixturevalue("postgres_server")
        name = f"hostile_{uuid.uuid4().hex[:16]}"
        url = server.create_database(name)
    database = migrated_database(url)
    yield database
    database.dispose()
    if name is not None:
        server.drop_database(name)


def run_and_check(database: Database, model_dir: Path, sent: list[Sent], batch_size: int) -> None:
    dialect = database.engine.dialect.name
    before = (database.count(PredictionRow), database.count(DeadLetterRow))
    topic = f"hostile-{uuid.uuid4().hex}"

    run = run_through_worker(
        "sentiment",
        model_dir,
        [(m.key, m.value) for m in sent],
        database_url=database.url,
        topic=topic,
        batch_size=batch_size,
        max_message_bytes=MAX_BYTES,
        device="cpu",
    )

    predicted = {row["source_offset"]: row for row in run.predictions}
    dead = {row["source_offset"]: row for row in run.dead_letters}
    tombstones = {row["source_offset"]: row for row in run.tombstones}
    assert len(predicted) == len(run.predictions) and len(dead) == len(run.dead_letters), "an offset stored twice"
    assert not predicted.keys() & dead.keys(), "a message is both a prediction and a dead letter"
    assert not tombstones.keys() & (predicted.keys() | dead.keys()), "a tombstone was also processed"
    assert sorted(predicted.keys() | dead.keys() | tombstones.keys()) == list(range(len(sent))), "a message was lost"

    for offset, original in enumerate(sent):
        expected = on_database(original, dialect)
        assert (offset in tombstones) == (expected.outcome == "tombstone"), f"message {offset}: {expected}"
        if offset in tombstones:
            assert tombstones[offset]["source_key"] == expected.key
            continue
        if offset in dead:
            row = dead[offset]
            assert expected.outcome != "prediction", f"message {offset} was dead-lettered: {row['reason']!r}"
            assert isinstance(row["reason"], str) and row["reason"].strip()
            assert expected.reason.lower() in row["reason"].lower(), row["reason"]
            assert row["raw_value"] == expected.value and row["source_key"] == expected.key  # byte for byte
            continue
        row = predicted[offset]
        assert expected.outcome != "dead", f"message {offset} was stored although it should be {expected}"
        if expected.text is not None:
            assert row["input_text"].encode("utf-8") == expected.text.encode("utf-8")
            assert row["record_id"] == expected.record_id
        else:  # random bytes that happened to be acceptable: the text is the value or its JSON "text"
            text = expected.value.decode("utf-8")
            assert row["input_text"] == (json.loads(text)["text"] if starts_like_json(text) else text)
        assert row["source_key"] == expected.key and row["source_key_text"] == key_text(expected.key)
        assert row["label"] in ("negative", "positive") and 0.0 <= row["score"] <= 1.0

    # SQL-looking text was stored as data: every table is still there and only this run's rows were added.
    tables = set(inspect(database.engine).get_table_names())
    assert {"predictions", "dead_letters", "models", "training_runs"} <= tables
    after = (database.count(PredictionRow), database.count(DeadLetterRow))
    assert after == (before[0] + len(run.predictions), before[1] + len(run.dead_letters))


WORKER_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@WORKER_SETTINGS
@given(sent=st.lists(messages, min_size=1, max_size=8), batch_size=st.integers(1, 8))
def test_every_message_becomes_one_prediction_or_one_dead_letter(
    shared_database, sentiment_model_dir, sent, batch_size
):
    run_and_check(shared_database, sentiment_model_dir, sent, batch_size)


KNOWN_HOSTILE = [
    plain("before", None),
    plain("nul \x00 inside", None),  # PostgreSQL refuses it: that message alone becomes a dead letter
    plain("keyed with a NUL", b"key\x00"),
    plain("keyed with a Schema Registry frame", b"\x00\x00\x00\x00\x2a\x06abc"),
    plain("keyed with a UUID", bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")),
    as_json("ok", "id\x00", None, None, False, None),
    as_json("ok", None, "note with \x00 is not stored", None, False, None),  # so PostgreSQL takes it
    Sent(None, b'{"text": "ok", "id": "\\udc00"}', "dead", reason="surrogate"),
    numbered(5_000),
    plain("long key", b"k" * 300),
    nested(2_000),
    plain(SQL_TEXT[0], SQL_TEXT[1].encode()),
    as_json(SQL_TEXT[1], SQL_TEXT[0], SQL_TEXT[2], SQL_TEXT[3], True, None),
    as_json("\u202eevil\u200f e\u0301 \U0001f468\u200d\U0001f469\u200d\U0001f467", 7, None, "", True, None),
    not_utf8("surrogate bytes", b"\xed\xa0\x80", 9, None),
    plain("after", None),
]


@pytest.mark.parametrize("batch_size", [1, len(KNOWN_HOSTILE)])
def test_known_hostile_messages_in_one_batch_or_one_at_a_time(shared_database, sentiment_model_dir, batch_size):
    run_and_check(shared_database, sentiment_model_dir, KNOWN_HOSTILE, batch_size)
