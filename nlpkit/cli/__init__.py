"""The ``nlpkit`` command line. Commands are thin: parse, call library code, print.

The top of the stack: it may import any package, and no package imports it (plugins reach
the CLI state through ``nlpkit.CliState``/``nlpkit.pass_state``). Heavy modules (torch,
transformers, the Kafka client, database drivers) are imported inside the commands that need
them, so ``nlpkit --help`` and ``nlpkit plugins`` answer quickly.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from nlpkit.cli import about, db, models, operations, performance, predict, streaming
from nlpkit.cli.common import CliState, NlpkitGroup
from nlpkit.errors import NlpkitError
from nlpkit.localservices.commands import services
from nlpkit.system.collector import collect_less_often
from nlpkit.system.files import forbid_shared_write


@click.group(cls=NlpkitGroup)
@click.version_option(package_name="nlpkit", prog_name="nlpkit")
@click.option("--database-url", metavar="URL", help="SQLAlchemy database URL [env NLPKIT_DATABASE_URL].")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, debug: bool) -> None:
    """nlpkit: DistilBERT task plugins fed from Kafka, stored in SQL."""
    forbid_shared_write()  # before any command creates a file
    ctx.obj = CliState(database_url=database_url, debug=debug)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A command that cannot reach Kafka says so in one line; librdkafka's retries are noise then,
    # and so is its own line (at CRITICAL) for a fatal error the command reports itself.
    logging.getLogger("nlpkit.kafka").setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)


for module in (about, predict, streaming, models, db, operations, performance):
    for command in module.COMMANDS:
        cli.add_command(command)
models.models.add_command(performance.quantize)
models.models.add_command(performance.tune)
cli.add_command(services)

_plugin_commands_added = False


def build_cli() -> click.Group:
    """The CLI with every plugin's commands added (once), ready to run."""
    global _plugin_commands_added
    if not _plugin_commands_added:
        from nlpkit.plugins import load_plugins

        load_plugins().hook.register_commands(cli=cli)
        _plugin_commands_added = True
    return cli


def main() -> None:
    """Console-script entry point: load plugins (they may add commands), then run the CLI."""
    collect_less_often()  # this process is nlpkit's own (nlpkit.system.collector)
    try:
        group = build_cli()
    except NlpkitError as exc:
        if os.environ.get("NLPKIT_DEBUG") == "1" or "--debug" in sys.argv:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    group()
