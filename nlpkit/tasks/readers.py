"""Reading records and labelled rows from the files people actually have.

Row files are JSON lines, TSV or CSV, told apart by extension. Every error names the
file and the line, because a training run that dies on row 41,307 of a TSV should say
so rather than show a traceback from the csv module.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from nlpkit.errors import DataFormatError

TEXT_COLUMNS = ("text", "sentence", "review")
Item = TypeVar("Item")


def seeded_sample(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """``limit`` items drawn at random with ``seed`` (all of them without a limit): several data
    files are sorted by label, so a prefix would be a sample of one label."""
    if limit is None or limit >= len(items):
        return items
    return random.Random(seed).sample(items, limit)


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a .jsonl/.json lines, .tsv or .csv file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        try:
            if suffix in (".jsonl", ".json", ".ndjson"):
                yield from _json_rows(path, handle)
            elif suffix in (".tsv", ".csv"):
                yield from _delimited_rows(path, handle, "\t" if suffix == ".tsv" else ",")
            else:
                raise DataFormatError(f"{path}: unknown format '{suffix}'; use .jsonl, .tsv or .csv")
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from exc


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataFormatError:
    """The error for a file that is not UTF-8, naming the first bad line.

    The text decoder reads in chunks, so its error knows a position in a chunk, not in the
    file: find the line again by decoding the raw lines (no UTF-8 sequence contains a newline).
    """
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataFormatError(f"{path}:{number}: not UTF-8 text ({bad.reason} at byte {bad.start + 1})")
    return DataFormatError(f"{path}: not UTF-8 text ({exc.reason})")


def _json_rows(path: Path, handle: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
        except RecursionError as exc:
            raise DataFormatError(f"{path}:{number}: invalid JSON: nested too deeply") from exc
        except ValueError as exc:  # an integer over Python's 4,300-digit limit
            raise DataFormatError(f"{path}:{number}: invalid JSON: {str(exc).split(';')[0]}") from exc
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _delimited_rows(path: Path, handle: TextIO, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # GLUE-style TSVs contain bare quote characters inside sentences: never treat quotes specially there.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
    try:
        if not reader.fieldnames:
            raise DataFormatError(f"{path}: empty file, expected a header line")
        for row in reader:
            number = reader.line_num
            if None in row or any(value is None for value in row.values()):
                raise DataFormatError(f"{path}:{number}: expected {len(reader.fieldnames)} columns")
            yield number, {key.strip(): value for key, value in row.items()}
    except csv.Error as exc:  # say, a field over csv.field_size_limit() (128 KiB)
        # DictReader.line_num only moves on after a good row; its reader's counts the line that failed.
        raise DataFormatError(f"{path}:{reader.reader.line_num}: {exc}") from exc


def text_field(row: dict[str, Any], where: str) -> str:
    """The row's text, from whichever of the usual column names it uses."""
    for column in TEXT_COLUMNS:
        if column in row:
            value = row[column]
            if not isinstance(value, str) or not value.strip():
                raise DataFormatError(f"{where}: column '{column}' must be non-empty text")
            return value
    raise DataFormatError(f"{where}: no text column (expected one of: {', '.join(TEXT_COLUMNS)})")


def parse_input_line(line: str) -> dict[str, Any]:
    """One line of ``nlpkit predict`` input: a JSON object, or else the whole line is the text."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError):  # not JSON after all (or nested or numbered beyond Python's limits)
            return {"text": line.rstrip("\r\n")}
        if isinstance(value, dict):
            return value
    return {"text": line.rstrip("\r\n")}


def input_lines(path: str | None, texts: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Inputs for predict: the given texts, else lines of a file ('-' or none = stdin)."""
    texts = list(texts)
    if texts:
        yield from ({"text": text} for text in texts)
        return
    handle = sys.stdin if path in (None, "-") else open(path, encoding="utf-8")  # noqa: SIM115
    lines_read = 0
    try:
        for line in handle:
            lines_read += 1
            if line.strip():
                yield parse_input_line(line)
    except UnicodeDecodeError as exc:
        if handle is sys.stdin:
            raise DataFormatError(f"standard input: not UTF-8 text ({exc.reason}) after line {lines_read}") from exc
        raise _not_utf8(Path(path), exc) from exc
    finally:
        if handle is not sys.stdin:
            handle.close()
