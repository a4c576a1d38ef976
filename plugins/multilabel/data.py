"""Reading multi-label data: GoEmotions' TSV and files with a ``labels`` column."""

from __future__ import annotations

import csv
from pathlib import Path

from nlpkit import TEXT_COLUMNS, DataFormatError, Example, Record, read_rows, text_field

# GoEmotions ships its label names one per line in emotions.txt, beside the TSVs.
LABEL_FILES = ("emotions.txt", "labels.txt")


def read_multilabel_examples(path: Path) -> list[Example]:
    path = Path(path)
    if path.suffix.lower() == ".tsv" and not _has_header(path):
        examples = list(_goemotions(path, _label_names(path)))
    else:
        examples = [_labelled_row(row, f"{path}:{number}") for number, row in read_rows(path)]
    if not examples:
        raise DataFormatError(f"{path}: no examples")
    return examples


def _has_header(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        columns = handle.readline().rstrip("\r\n").split("\t")
    return "labels" in columns and any(column in TEXT_COLUMNS for column in columns)


def _label_names(path: Path) -> list[str] | None:
    for name in LABEL_FILES:
        candidate = path.with_name(name)
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def _goemotions(path: Path, names: list[str] | None):
    """``text<TAB>id,id,...<TAB>comment id`` rows; ids index the label file (or stay as names)."""
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            where = f"{path}:{number}"
            if len(row) < 2 or not row[0].strip():
                raise DataFormatError(f"{where}: expected text and comma-separated label ids")
            try:
                ids = [int(value) for value in row[1].split(",")]
            except ValueError as exc:
                raise DataFormatError(f"{where}: label ids must be integers, got {row[1]!r}") from exc
            if names is not None and any(not 0 <= i < len(names) for i in ids):
                raise DataFormatError(f"{where}: label id out of range 0..{len(names) - 1}: {row[1]}")
            labels = tuple(names[i] if names is not None else str(i) for i in ids)
            yield Example(Record({"text": row[0]}), labels, where)


def _labelled_row(row: dict, where: str) -> Example:
    labels = row.get("labels")
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        raise DataFormatError(f"{where}: 'labels' must be a list of label names (or comma-separated names)")
    return Example(Record({"text": text_field(row, where)}), tuple(labels), where)
