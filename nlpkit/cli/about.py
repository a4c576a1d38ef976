"""What this installation is: ``nlpkit plugins`` and ``nlpkit config``."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from nlpkit import settings
from nlpkit.cli.common import (
    CliState,
    pass_state,
)

stderr = Console(stderr=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their version and the hooks they implement."""
    from nlpkit.plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    table = Table("plugin", "distribution", "version", "hooks")
    for info in infos:
        table.add_row(info.name, info.distribution or "-", info.version or "-", ", ".join(info.hooks))
    Console().print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def config(state: CliState, as_json: bool) -> None:
    """The effective settings and where each came from (flag, environment, nlpkit.toml, default)."""
    rows = settings.effective()
    if state.database_url:  # a --database-url given to this very command is the effective one
        rows = [
            ("database_url", settings.shown("database_url", state.database_url), "flag")
            if name == "database_url"
            else (name, value, source)
            for name, value, source in rows
        ]
    if as_json:
        click.echo(json.dumps([{"name": n, "value": v, "source": s} for n, v, s in rows], indent=2))
        return
    table = Table("setting", "value", "source")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


COMMANDS = (
    plugins,
    config,
)
