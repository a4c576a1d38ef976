"""Kafka from the command line: ``nlpkit consume``, ``nlpkit send`` and ``nlpkit topics``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from nlpkit import settings
from nlpkit.cli.common import (
    BACKEND_OPTION,
    CliState,
    NlpkitGroup,
    bootstrap_option,
    decoding_options,
    key_values,
    options_by_task,
    pass_state,
)
from nlpkit.stream.messages import DEFAULT_PASS_HEADERS, bytes_as_json

if TYPE_CHECKING:
    from nlpkit.stream.worker import WorkerConfig

stderr = Console(stderr=True)


@dataclass(frozen=True)
class ConsumeOptions:
    """Everything ``nlpkit consume`` is asked, typed: one field per option."""

    topics: tuple[str, ...]
    tasks: tuple[str, ...]
    group: str | None
    bootstrap_servers: str | None
    models: tuple[str, ...]
    backend: str
    device: str
    batch_size: int
    max_messages: int | None
    max_message_bytes: int
    dead_letter_topic: str | None
    tombstones: str
    value_format: str
    key_format: str
    schema_registry: str | None
    fields: dict[str, str]
    pass_headers: str
    output_topic: str | None
    output_format: str
    output_schema: Path | None
    store: bool
    task_options: dict[str, str]
    metrics_port: int | None
    metrics_host: str | None
    metrics_token_file: str | None
    consumer_settings: dict[str, str]

    def worker_config(self) -> WorkerConfig:
        from nlpkit.stream.decoding import parse_field_map
        from nlpkit.stream.worker import WorkerConfig

        return WorkerConfig(
            topics=self.topics,
            group=self.group or f"nlpkit-{self.tasks[0]}",
            bootstrap_servers=settings.get("bootstrap_servers", self.bootstrap_servers),
            batch_size=self.batch_size,
            max_messages=self.max_messages,
            max_message_bytes=self.max_message_bytes,
            dead_letter_topic=self.dead_letter_topic,
            tombstones=self.tombstones,
            value_format=self.value_format,
            key_format=self.key_format,
            fields=parse_field_map(self.fields),
            schema_registry=self.schema_registry,
            pass_headers=tuple(name.strip() for name in self.pass_headers.split(",") if name.strip()),
            output_topic=self.output_topic,
            output_format=self.output_format,
            output_schema=self.output_schema,
            consumer_config=self.consumer_settings,
        )


@click.command()
@click.option("--topic", "topics", multiple=True, required=True, help="Topic to consume (repeatable).")
@click.option(
    "--task",
    "tasks",
    multiple=True,
    required=True,
    help="Task to run (repeatable; a message's 'task' field picks one, default the first).",
)
@click.option("--group", help="Consumer group [nlpkit-TASK].")
@bootstrap_option
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="[TASK=]REF",
    help="Model for a task (TASK=REF with several tasks) [newest registered].",
)
@click.option("--backend", **BACKEND_OPTION)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=512, show_default=True, help="Most messages per poll and transaction.")
@click.option("--max-messages", type=int, help="Stop after this many messages.")
@click.option(
    "--max-message-bytes", type=int, default=100_000, show_default=True, help="Larger messages become dead letters."
)
@click.option("--dead-letter-topic", help="Also copy dead letters to this topic (Kafka Connect's error headers).")
@click.option(
    "--tombstones",
    type=click.Choice(["skip", "dead-letter"]),
    default="skip",
    show_default=True,
    help="A null value (tombstone): recorded, counted and skipped, or kept as a dead letter.",
)
@decoding_options
@click.option(
    "--pass-headers",
    default=",".join(DEFAULT_PASS_HEADERS),
    show_default=True,
    metavar="NAMES",
    help="Source headers stored with each row and copied onto results (comma-separated; '' for none).",
)
@click.option("--output-topic", help="Also produce one result message per prediction to this topic.")
@click.option(
    "--output-format",
    type=click.Choice(["json", "avro"]),
    default="json",
    show_default=True,
    help="Result values: the output JSON, or Avro (with --output-schema and --schema-registry).",
)
@click.option(
    "--output-schema", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Avro schema (.avsc)."
)
@click.option(
    "--store/--no-store",
    default=True,
    show_default=True,
    help="--no-store: results only to --output-topic, dead letters to --dead-letter-topic, in one Kafka "
    "transaction with the offsets (exactly once).",
)
@click.option(
    "-o",
    "--option",
    "task_options",
    multiple=True,
    metavar="[TASK.]NAME=VALUE",
    callback=key_values,
    help="A task setting, e.g. -o aggregation=first or -o qa.top_k=3 (repeatable).",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve /metrics and /healthz on this port.")
@click.option("--metrics-host", help="Address for the metrics server [env NLPKIT_METRICS_HOST, 127.0.0.1].")
@click.option(
    "--metrics-token-file",
    metavar="FILE",
    help="Require this file's token as a bearer token on /metrics and /healthz "
    "[env NLPKIT_METRICS_TOKEN_FILE; or the token in NLPKIT_METRICS_TOKEN].",
)
@click.option(
    "-X",
    "consumer_settings",
    multiple=True,
    callback=key_values,
    metavar="KEY=VALUE",
    help="librdkafka consumer setting, passed through (repeatable).",
)
@pass_state
def consume(state: CliState, **given: Any) -> None:
    """Consume topics, store one prediction (or dead letter) per message, commit after storing."""
    from nlpkit.inference import Engine
    from nlpkit.pipelines import ModelRegistry, load_task
    from nlpkit.plugins import load_plugins
    from nlpkit.stream.monitoring import read_metrics_token
    from nlpkit.stream.service import serve
    from nlpkit.system.threads import configure_threads

    options = ConsumeOptions(**given)
    config = options.worker_config()
    token_file = settings.get("metrics_token_file", options.metrics_token_file)
    token = read_metrics_token(settings.get("metrics_token"), token_file) if options.metrics_port is not None else None
    database = state.database() if options.store else None
    registry = ModelRegistry(database or state.database(check=False))
    model_refs = _models_by_task(options.tasks, options.models)
    task_options = options_by_task(options.tasks, options.task_options)
    configure_threads()
    engines = {
        task: Engine(
            load_task(task, model_refs.get(task), backend=options.backend, device=options.device,
                      registry=registry, **task_options[task])
        )
        for task in options.tasks
    }  # fmt: skip
    stats = serve(
        config,
        engines,
        database,
        hook=load_plugins().hook,
        metrics_host=settings.get("metrics_host", options.metrics_host),
        metrics_port=options.metrics_port,
        metrics_token=token,
    )
    stderr.print(
        f"consumed {stats.messages} messages: {stats.predictions} predictions, "
        f"{stats.dead_letters} dead letters, {stats.tombstones} tombstones skipped, {stats.batches} transactions"
    )


def _models_by_task(tasks: tuple[str, ...], models: tuple[str, ...]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for item in models:
        task, sep, ref = item.partition("=")
        if sep and task in tasks:
            refs[task] = ref
        elif len(tasks) == 1:
            refs[tasks[0]] = item
        else:
            raise click.BadParameter(f"with several tasks, write --model TASK=REF (got '{item}')")
    return refs


@click.command()
@click.option("--topic", required=True, help="Topic to send to.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@bootstrap_option
@click.option("--text-column", help="Column holding the text [text, sentence or review].")
@click.option("--key-field", default="id", show_default=True, help="Field used as the message key, if present.")
@click.option("--sample", type=int, help="Send a random sample of this many rows.")
@click.option("--seed", default=0, show_default=True, help="Seed for --sample.")
@click.option(
    "--value-format",
    type=click.Choice(["json", "avro"]),
    default="json",
    show_default=True,
    help="JSON objects, or Avro records of --schema registered with --schema-registry.",
)
@click.option("--schema", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Avro schema (.avsc).")
@click.option("--schema-registry", metavar="URL", help="Schema Registry URL [env NLPKIT_SCHEMA_REGISTRY_URL].")
def send(
    topic: str,
    file: Path,
    bootstrap_servers: str | None,
    text_column: str | None,
    key_field: str,
    sample: int | None,
    seed: int,
    value_format: str,
    schema: Path | None,
    schema_registry: str | None,
) -> None:
    """Send the rows of a JSON lines, TSV or CSV file to a topic as JSON messages (or Avro records)."""
    from tqdm import tqdm

    from nlpkit.stream.kafka_clients import avro_encoder, file_messages, produce

    encode = None
    if value_format == "avro":
        if schema is None:
            raise click.UsageError("--value-format avro needs --schema FILE (an Avro schema, .avsc)")
        encode = avro_encoder(topic, schema, schema_registry)
    messages = file_messages(
        file, text_column=text_column, key_field=key_field, sample=sample, seed=seed, encode=encode
    )
    # disable=None: a bar on a terminal, none in logs and pipes.
    with tqdm(total=len(messages), unit="msg", desc=f"sending to {topic}", disable=None) as bar:
        sent = produce(settings.get("bootstrap_servers", bootstrap_servers), topic, messages, progress=bar.update)
    stderr.print(f"sent {sent} messages to '{topic}'")


@click.group(cls=NlpkitGroup)
def topics() -> None:
    """Create and list Kafka topics."""


@topics.command("create")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--replication-factor", default=1, show_default=True, type=click.IntRange(min=1))
@bootstrap_option
def topics_create(
    names: tuple[str, ...], partitions: int, replication_factor: int, bootstrap_servers: str | None
) -> None:
    """Create topics (each one that exists is left as it is)."""
    from nlpkit.stream.kafka_clients import create_topic

    servers = settings.get("bootstrap_servers", bootstrap_servers)
    for name in names:
        created = create_topic(servers, name, partitions, replication_factor)
        stderr.print(f"created topic '{name}' with {partitions} partition(s)" if created else f"topic '{name}' exists")


@topics.command("read")
@click.argument("name")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(min=1), help="At most this many messages.")
@bootstrap_option
def topics_read(name: str, limit: int, bootstrap_servers: str | None) -> None:
    """Print a topic's first messages as JSON lines (key, headers, value), joining no group.

    A value that is JSON is printed as JSON, other text as text, anything else as
    {"base64": ...}; keys and headers as `nlpkit results` exports keys.
    """
    from nlpkit.stream.kafka_clients import read_topic

    for message in read_topic(settings.get("bootstrap_servers", bootstrap_servers), name, limit):
        shown = {
            "partition": message.partition(),
            "offset": message.offset(),
            "key": bytes_as_json(message.key()),
            "headers": {key: bytes_as_json(value) for key, value in message.headers() or []},
            "value": bytes_as_json(message.value(), parse_json=True),
        }
        click.echo(json.dumps(shown, ensure_ascii=False))


@topics.command("list")
@bootstrap_option
def topics_list(bootstrap_servers: str | None) -> None:
    """List topics and their partition counts."""
    from nlpkit.stream.kafka_clients import list_topics

    for name, partitions in list_topics(settings.get("bootstrap_servers", bootstrap_servers)).items():
        click.echo(f"{name}\t{partitions}")


COMMANDS = (
    consume,
    send,
    topics,
)
