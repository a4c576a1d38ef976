"""``nlpkit services``: start, stop and inspect the local Kafka broker and PostgreSQL server.

Human-readable lines and spinners go to stderr and the ``export`` line to stdout, so
``eval "$(nlpkit services kafka start)"`` sets the variable in the calling shell.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console

from nlpkit.localservices import ServiceStatus
from nlpkit.localservices.errors import ServiceError

# The services' modules import the Kafka client and the PostgreSQL driver: each command imports
# what it needs, so that `nlpkit --help` loads neither.

# Exit status of `status` when the service is not running (the same convention as pg_ctl status).
NOT_RUNNING = 3

_console = Console(stderr=True, soft_wrap=True)
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the service keeps its data (default: a persistent directory under the nlpkit cache).",
)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """A service failure is one line at the terminal, pointing at the log; no traceback."""
    try:
        yield
    except ServiceError as error:
        raise click.ClickException(error.summary) from error


def _report_status(name: str, status: ServiceStatus) -> None:
    if status.running:
        _console.print(f"{name} is running at {status.address} (pid {status.pid}, data in {status.data_dir})")
    else:
        _console.print(f"{name} is not running (data dir {status.data_dir})")
        raise click.exceptions.Exit(NOT_RUNNING)


def _report_stop(name: str, pid: int | None, data_dir: Path | None) -> None:
    if pid is None:
        where = f" in {data_dir}" if data_dir else ""
        _console.print(f"No {name} was running{where}.")
    else:
        _console.print(f"Stopped {name} (pid {pid}).")


@click.group("services")
def services() -> None:
    """Run a real Kafka broker and PostgreSQL server locally for the demo and the tests."""


@services.command("install")
def install() -> None:
    """Fetch the Kafka broker's jars and install PostgreSQL if missing (cached; safe to repeat)."""
    from nlpkit.localservices.kafka import KAFKA_VERSION, ensure_kafka_jars
    from nlpkit.localservices.postgres import ensure_postgres_installed

    with _one_line_errors():
        with _console.status(f"Fetching Apache Kafka {KAFKA_VERSION} jars (first run only)..."):
            libs = ensure_kafka_jars()
        _console.print(f"Kafka {KAFKA_VERSION} jars: {libs}")
        with _console.status("Looking for PostgreSQL (installing it with apt-get if missing)..."):
            bindir = ensure_postgres_installed()
        _console.print(f"PostgreSQL binaries: {bindir}")


@services.group("kafka")
def kafka() -> None:
    """The local Apache Kafka broker (single KRaft node on 127.0.0.1; needs Java 17+ and Maven)."""


@kafka.command("start")
@_data_dir_option
@click.option("--port", type=int, default=9092, show_default=True, help="Broker port on 127.0.0.1.")
def kafka_start(data_dir: Path | None, port: int) -> None:
    """Start the broker (or find the one already running) and print its address."""
    from nlpkit.localservices.kafka import KAFKA_VERSION, ensure_kafka_jars, start_local_broker

    with _one_line_errors():
        with _console.status(f"Fetching Apache Kafka {KAFKA_VERSION} jars (first run only)..."):
            ensure_kafka_jars()
        with _console.status("Starting the Kafka broker and waiting until a consumer group works..."):
            broker = start_local_broker(data_dir, port)
    _console.print(f"Kafka broker running at {broker.bootstrap_servers} (pid {broker.pid}, data in {broker.data_dir})")
    click.echo(f"export NLPKIT_BOOTSTRAP_SERVERS={broker.bootstrap_servers}")


@kafka.command("stop")
@_data_dir_option
def kafka_stop(data_dir: Path | None) -> None:
    """Stop the broker (controlled shutdown; killed after 20 s)."""
    from nlpkit.localservices.kafka import stop_local_broker

    with _one_line_errors():
        _report_stop("Kafka broker", stop_local_broker(data_dir), data_dir)


@kafka.command("status")
@_data_dir_option
def kafka_status(data_dir: Path | None) -> None:
    """Say whether the broker runs; exit status 3 when it does not."""
    from nlpkit.localservices.kafka import local_broker_status

    with _one_line_errors():
        _report_status("Kafka broker", local_broker_status(data_dir))


@services.group("postgres")
def postgres() -> None:
    """The local PostgreSQL server (127.0.0.1 only; user, password and database are all 'nlpkit')."""


@postgres.command("start")
@_data_dir_option
@click.option("--port", type=int, default=5433, show_default=True, help="Server port on 127.0.0.1.")
def postgres_start(data_dir: Path | None, port: int) -> None:
    """Start the server (or find the one already running) and print its database URL."""
    from nlpkit.localservices.postgres import ensure_postgres_installed, start_local_postgres

    with _one_line_errors():
        with _console.status("Looking for PostgreSQL (installing it with apt-get if missing)..."):
            ensure_postgres_installed()
        with _console.status("Starting PostgreSQL..."):
            server = start_local_postgres(data_dir, port)
    _console.print(f"PostgreSQL running at 127.0.0.1:{server.port} (pid {server.pid}, data in {server.data_dir})")
    click.echo(f"export NLPKIT_DATABASE_URL={server.url}")


@postgres.command("stop")
@_data_dir_option
def postgres_stop(data_dir: Path | None) -> None:
    """Stop the server (fast shutdown)."""
    from nlpkit.localservices.postgres import stop_local_postgres

    with _one_line_errors():
        _report_stop("PostgreSQL server", stop_local_postgres(data_dir), data_dir)


@postgres.command("status")
@_data_dir_option
def postgres_status(data_dir: Path | None) -> None:
    """Say whether the server runs; exit status 3 when it does not."""
    from nlpkit.localservices.postgres import local_postgres_status

    with _one_line_errors():
        _report_status("PostgreSQL server", local_postgres_status(data_dir))
