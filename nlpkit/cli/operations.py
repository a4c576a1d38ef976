"""Commands for the people who run nlpkit: ``status``, ``dead-letters`` and ``results``."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from nlpkit import settings
from nlpkit.cli.common import (
    MOMENT,
    CliState,
    NlpkitGroup,
    auto_backend_here,
    bootstrap_option,
    decoding_options,
    one_line,
    pass_state,
)
from nlpkit.errors import NlpkitError
from nlpkit.stream.messages import bytes_as_json

stderr = Console(stderr=True)


# --- status ----------------------------------------------------------------------------------


@click.command()
@click.option("--group", "groups", multiple=True, help="Consumer group to show (repeatable) [every group].")
@click.option("--topic", "topics", multiple=True, help="Only these topics, every partition (repeatable).")
@bootstrap_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@pass_state
def status(
    state: CliState, groups: tuple[str, ...], topics: tuple[str, ...], bootstrap_servers: str | None, as_json: bool
) -> None:
    """Consumer lag per partition, stored rows per task, and registered models.

    Each part is reported even when another cannot be read; the exit code is 1 if any failed.
    """
    from nlpkit.errors import redact_url
    from nlpkit.store.queries import counts_by_task, tombstones_by_topic

    report: dict[str, Any] = {}
    errors: list[str] = []

    def gather(part: str, read: Any) -> None:
        try:
            report[part] = read()
        except Exception as exc:  # noqa: BLE001 - each part fails on its own, as one line
            if state.debug:
                raise
            report[part] = {"error": one_line(exc)}
            errors.append(f"{part}: {one_line(exc)}")

    servers = settings.get("bootstrap_servers", bootstrap_servers)
    gather("kafka", lambda: {"bootstrap_servers": servers, "partitions": _lag_rows(servers, groups, topics)})

    def database_part() -> dict[str, Any]:
        database = state.database()
        models = [entry.as_dict() | {"auto_backend": auto_backend_here(entry)} for entry in database.models.list()]
        return {
            "url": redact_url(database.url),
            "tasks": counts_by_task(database),
            "tombstones": tombstones_by_topic(database),
            "models": models,
        }

    gather("database", database_part)
    report["models"] = report["database"].pop("models", [])  # a top-level part of its own; none if unreadable
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report)
    if errors:
        raise NlpkitError("; ".join(errors))


def _lag_rows(servers: str, groups: tuple[str, ...], topics: tuple[str, ...]) -> list[dict]:
    from nlpkit.stream.lag import consumer_lag

    return [row.as_dict() for row in consumer_lag(servers, groups=groups, topics=topics)]


def _print_status(report: dict[str, Any]) -> None:
    console = Console()
    kafka = report["kafka"]
    if "error" not in kafka:
        table = Table("group", "topic", "partition", "committed", "high watermark", "lag", title="Kafka")
        for row in kafka["partitions"]:
            committed = "-" if row["committed"] is None else row["committed"]
            cells = (row["group"], row["topic"], row["partition"], committed, row["high_watermark"], row["lag"])
            table.add_row(*map(str, cells))
        console.print(table if kafka["partitions"] else f"Kafka at {kafka['bootstrap_servers']}: no consumer groups")
    database = report["database"]
    if "error" not in database:
        table = Table("task", "predictions", "dead letters", "not replayed", title=f"Database {database['url']}")
        for task, counts in database["tasks"].items():
            table.add_row(task, *(str(counts[key]) for key in ("predictions", "dead_letters", "dead_letters_pending")))
        console.print(table if database["tasks"] else f"Database {database['url']}: no rows yet")
        if database["tombstones"]:
            table = Table("topic", "tombstones skipped", title="Tombstones (null values)")
            for topic, count in database["tombstones"].items():
                table.add_row(topic, str(count))
            console.print(table)
    table = Table("name", "task", "revision", "auto backend", "created", title="Models")
    for model in report["models"]:
        cells = (model["name"], model["task"], model["revision"], model["auto_backend"] or "", model["created_at"][:16])
        table.add_row(*cells)
    console.print(table if report["models"] else "No registered models")


# --- dead letters ------------------------------------------------------------------------------


def _dead_letter_filters(function: Any) -> Any:
    for option in reversed(
        [
            click.option("--task", help="Only this task's dead letters."),
            click.option("--topic", help="Only messages from this topic."),
            click.option("--stage", help="Only this stage: decode, validate, route or model."),
            click.option("--reason", "reason_contains", metavar="TEXT", help="Only reasons containing TEXT."),
            click.option("--since", type=MOMENT, help="Stored at or after (ISO time, or an age like 2h)."),
            click.option("--until", type=MOMENT, help="Stored before (ISO time, or an age like 30m)."),
        ]
    ):
        function = option(function)
    return function


@click.group("dead-letters", cls=NlpkitGroup)
def dead_letters() -> None:
    """Inspect and replay messages that could not be processed."""


@dead_letters.command("list")
@_dead_letter_filters
@click.option("--replayed/--not-replayed", default=None, help="Only replayed, or only not yet replayed, ones.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, raw bytes included.")
@pass_state
def dead_letters_list(state: CliState, limit: int, as_json: bool, **filters: Any) -> None:
    """Dead letters, newest first."""
    from nlpkit.store.queries import DeadLetterFilter
    from nlpkit.store.queries import dead_letters as read

    letters = read(state.database(), DeadLetterFilter(**filters), limit=limit)
    if as_json:
        for letter in letters:
            click.echo(json.dumps(_letter_dict(letter), ensure_ascii=False))
        return
    table = Table("id", "task", "stage", "source", "reason", "stored", "replayed")
    for letter in letters:
        table.add_row(
            str(letter.id),
            letter.task,
            letter.stage,
            _source(letter),
            letter.reason if len(letter.reason) <= 60 else letter.reason[:59] + "…",
            f"{letter.stored_at:%Y-%m-%d %H:%M:%S}",
            f"{letter.replayed_at:%Y-%m-%d %H:%M}" if letter.replayed_at else "",
        )
    Console().print(table if letters else "No dead letters match")


@dead_letters.command("show")
@click.argument("letter_id", metavar="ID", type=int)
@click.option("--bytes", "shown_bytes", default=1024, show_default=True, help="Show at most this many raw bytes.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def dead_letters_show(state: CliState, letter_id: int, shown_bytes: int, as_json: bool) -> None:
    """One dead letter: where it came from, why it failed, and its raw bytes."""
    letter = _one_letter(state, letter_id)
    if as_json:
        click.echo(json.dumps(_letter_dict(letter), ensure_ascii=False, indent=2))
        return
    details = _letter_dict(letter)
    for name in ("id", "task", "stage", "reason", "source", "key", "message_timestamp", "stored_at", "replayed_at"):
        click.echo(f"{name + ':':<19}{details[name] if details[name] is not None else '-'}")
    raw = letter.raw_value or b""
    cut = f", first {shown_bytes} shown" if len(raw) > shown_bytes else ""
    click.echo(f"{'raw value:':<19}{len(raw)} bytes{cut}")
    click.echo(_hexdump(raw[:shown_bytes]))


@dead_letters.command("replay")
@click.argument("ids", nargs=-1, type=int)
@_dead_letter_filters
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter matching the filters (not yet replayed).")
@click.option("--to-topic", metavar="TOPIC", help="Send to TOPIC instead of each message's own topic.")
@click.option("--direct", is_flag=True, help="Process them here and now instead of re-sending them to Kafka.")
@click.option("--model", help="With --direct: the model to use [newest registered for the task].")
@click.option(
    "--output-topic",
    metavar="TOPIC",
    help="With --direct: also produce each new result to TOPIC, as `consume --output-topic` does.",
)
@decoding_options
@click.option("--again", is_flag=True, help="Include dead letters that were replayed before.")
@click.option("--dry-run", is_flag=True, help="List what would be replayed and stop.")
@bootstrap_option
@pass_state
def dead_letters_replay(
    state: CliState,
    ids: tuple[int, ...],
    replay_all: bool,
    to_topic: str | None,
    direct: bool,
    model: str | None,
    output_topic: str | None,
    again: bool,
    dry_run: bool,
    bootstrap_servers: str | None,
    value_format: str,
    key_format: str,
    schema_registry: str | None,
    fields: dict[str, str],
    **filters: Any,
) -> None:
    """Re-send dead letters (by ID, or --all matching the filters) to Kafka and mark them replayed.

    The raw key and value go out unchanged, with an ``nlpkit.replay-of`` header naming
    the original topic/partition/offset; the workers then process them as new messages.
    With --direct they are processed here instead, read as the worker read them (the same
    --value-format, --schema-registry and --field), their predictions stored under their
    original offsets (and, with --output-topic, produced there); those that fail again stay
    dead letters, with the new reason.
    """
    from nlpkit.store.queries import DeadLetterFilter
    from nlpkit.store.queries import dead_letters as read
    from nlpkit.stream.replay import resend

    if not ids and not replay_all:
        raise click.UsageError("name dead letters by ID, or pass --all (with filters) to replay every match")
    if output_topic and not direct:
        raise click.UsageError("--output-topic goes with --direct (re-sent messages reach the workers' output topic)")
    database = state.database()
    letters = read(database, DeadLetterFilter(ids=ids, replayed=None if again or ids else False, **filters))
    missing = sorted(set(ids) - {letter.id for letter in letters})
    if missing:
        raise NlpkitError(f"no dead letter with id {missing[0]} matches; see `nlpkit dead-letters list`")
    if dry_run or not letters:
        for letter in letters:
            click.echo(f"{letter.id}\t{_source(letter)}\t{letter.reason}")
        stderr.print(f"{len(letters)} dead letter(s) would be replayed" if dry_run else "nothing to replay")
        return
    if direct:
        from nlpkit.stream.decoding import MessageDecoder, configured_registry, parse_field_map

        decoder = MessageDecoder(
            value_format=value_format,
            key_format=key_format,
            fields=parse_field_map(fields),
            registry=configured_registry(schema_registry),
        )
        output = None
        if output_topic:
            from nlpkit.stream.sinks.output_topic import OutputTopic, ResultEncoder

            output = OutputTopic(output_topic, settings.get("bootstrap_servers", bootstrap_servers), ResultEncoder())
        try:
            outcome = _replay_directly(database, letters, model, decoder, output)
        finally:
            if output is not None:
                output.close()
        produced = f", produced to '{output_topic}'" if output_topic else ""
        stderr.print(
            f"replayed {len(letters)}: {outcome.stored} stored{produced}, {outcome.still_dead} still dead letters"
        )
        return
    sent = resend(database, letters, settings.get("bootstrap_servers", bootstrap_servers), topic=to_topic)
    stderr.print(f"replayed {sent} dead letter(s)" + (f" to '{to_topic}'" if to_topic else " to their topics"))


def _replay_directly(database: Any, letters: list[Any], model: str | None, decoder: Any, output: Any) -> Any:
    from nlpkit.inference.engine import Engine
    from nlpkit.pipelines import ModelRegistry, load_task
    from nlpkit.stream.replay import process_directly

    tasks = sorted({letter.task for letter in letters})
    if model and len(tasks) > 1:
        raise NlpkitError(f"these dead letters span several tasks ({', '.join(tasks)}); pick one with --task")
    registry = ModelRegistry(database)
    engines = {task: Engine(load_task(task, model, registry=registry)) for task in tasks}
    return process_directly(database, letters, engines, decoder, output)


def _one_letter(state: CliState, letter_id: int) -> Any:
    from nlpkit.store.queries import DeadLetterFilter
    from nlpkit.store.queries import dead_letters as read

    found = read(state.database(), DeadLetterFilter(ids=[letter_id]))
    if not found:
        raise NlpkitError(f"no dead letter with id {letter_id}; see `nlpkit dead-letters list`")
    return found[0]


def _source(letter: Any) -> str:
    return f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"


def _letter_dict(letter: Any) -> dict[str, Any]:
    import base64

    raw = letter.raw_value
    return {
        "id": letter.id,
        "task": letter.task,
        "stage": letter.stage,
        "reason": letter.reason,
        "source": _source(letter),
        "topic": letter.source_topic,
        "partition": letter.source_partition,
        "offset": letter.source_offset,
        "key": bytes_as_json(letter.source_key),
        "raw_text": None if raw is None else raw.decode("utf-8", "backslashreplace"),
        "raw_base64": None if raw is None else base64.b64encode(raw).decode("ascii"),
        "message_timestamp": _iso(letter.message_timestamp),
        "stored_at": _iso(letter.stored_at),
        "replayed_at": _iso(letter.replayed_at),
    }


def _hexdump(data: bytes, width: int = 16) -> str:
    """Offset, hex bytes and printable ASCII, 16 bytes a line: the bytes exactly as Kafka held them."""
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        shown = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(f"  {start:08x}  {chunk.hex(' '):<{width * 3}} {shown}")
    return "\n".join(lines) or "  (empty)"


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    from nlpkit.store import as_utc

    return as_utc(moment).isoformat()


# --- results ------------------------------------------------------------------------------------


@click.command()
@click.option("--task", help="Only this task's predictions.")
@click.option("--label", help="Only predictions with this label.")
@click.option("--model", help="Only predictions of this model (registered name or directory name).")
@click.option("--topic", help="Only predictions for messages from this topic.")
@click.option("--since", type=MOMENT, help="Stored at or after (ISO time, or an age like 2h).")
@click.option("--until", type=MOMENT, help="Stored before (ISO time, or an age like 30m).")
@click.option("--min-score", type=float, help="Only predictions scoring at least this.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows, oldest first.")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE [stdout].")
@click.option("--count", "count_only", is_flag=True, help="Print only the number of matching rows.")
@pass_state
def results(
    state: CliState,
    limit: int | None,
    output_format: str,
    output: Path | None,
    count_only: bool,
    **filters: Any,
) -> None:
    """Query stored predictions and export them as JSON lines or CSV."""
    from nlpkit.store.queries import PredictionFilter, count_predictions, iter_predictions
    from nlpkit.system.files import output_file

    database = state.database()
    where = PredictionFilter(**filters)
    if count_only:
        click.echo(count_predictions(database, where))
        return
    with output_file(output, newline="" if output_format == "csv" else None) as stream:
        written = _write_rows(stream, output_format, iter_predictions(database, where, limit=limit))
    if output is not None:
        stderr.print(f"wrote {written} prediction(s) to {output}")


def _write_rows(stream: Any, output_format: str, rows: Iterable[dict[str, Any]]) -> int:
    from nlpkit.store.queries import PREDICTION_COLUMNS

    writer = csv.DictWriter(stream, fieldnames=PREDICTION_COLUMNS) if output_format == "csv" else None
    if writer:
        writer.writeheader()
    written = 0
    for row in rows:
        row = {name: _iso(value) if isinstance(value, dt.datetime) else value for name, value in row.items()}
        text = row.pop("source_key_text")
        if writer:
            writer.writerow({name: _cell(value) for name, value in row.items()} | {"source_key": text})
        else:
            row["source_key"] = bytes_as_json(row["source_key"])
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        written += 1
    return written


def _cell(value: Any) -> Any:
    """JSON columns (the output, extra input fields) as JSON text in a CSV cell."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


COMMANDS = (status, dead_letters, results)
