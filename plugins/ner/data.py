"""Reading NER data: CoNLL-2003 files and JSON lines of tokens and tags."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from nlpkit import DataFormatError, Example, Record, read_rows

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def read_ner_examples(path: Path) -> list[Example]:
    """CoNLL columns (word first, tag last; IOB1 or BIO, converted to BIO) or JSON lines
    ``{"tokens": [...], "tags": [...]}``. Each example's text is its words joined by spaces."""
    path = Path(path)
    sentences = _json_sentences(path) if path.suffix.lower() in JSON_SUFFIXES else _conll_sentences(path)
    examples = [
        Example(Record({"text": " ".join(words)}), {"words": words, "tags": to_bio(tags)}, where)
        for where, words, tags in sentences
    ]
    if not examples:
        raise DataFormatError(f"{path}: no sentences")
    return examples


def _conll_sentences(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    words: list[str] = []
    tags: list[str] = []
    start = 1
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                if words:
                    yield f"{path}:{start}", words, tags
                words, tags, start = [], [], number + 1
                continue
            if len(columns) < 2:
                raise DataFormatError(f"{path}:{number}: expected a word and a tag, got {line.strip()!r}")
            if not _is_tag(columns[-1]):
                raise DataFormatError(f"{path}:{number}: {columns[-1]!r} is not a tag (O, B-X or I-X)")
            words.append(columns[0])
            tags.append(columns[-1])
    if words:
        yield f"{path}:{start}", words, tags


def _json_sentences(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    for number, row in read_rows(path):
        where = f"{path}:{number}"
        words, tags = row.get("tokens"), row.get("tags")
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) or not words:
            raise DataFormatError(f"{where}: expected non-empty 'tokens' and 'tags' lists of equal length")
        if not all(isinstance(word, str) and word and " " not in word for word in words):
            raise DataFormatError(f"{where}: every token must be a non-empty string without spaces")
        bad = [tag for tag in tags if not isinstance(tag, str) or not _is_tag(tag)]
        if bad:
            raise DataFormatError(f"{where}: {bad[0]!r} is not a tag (O, B-X or I-X)")
        yield where, words, tags


def _is_tag(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def to_bio(tags: list[str]) -> list[str]:
    """IOB1 to BIO: an ``I-X`` that does not continue an ``X`` becomes ``B-X`` (BIO is unchanged)."""
    converted = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        converted.append(tag)
        previous = tag
    return converted
