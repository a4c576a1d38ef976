"""``nlpkit db``: create and migrate the schema (Alembic)."""

from __future__ import annotations

import click
from rich.console import Console

from nlpkit.cli.common import (
    CliState,
    NlpkitGroup,
    pass_state,
)

stderr = Console(stderr=True)


@click.group(cls=NlpkitGroup)
def db() -> None:
    """Create and migrate the database schema (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_state
def db_upgrade(state: CliState, revision: str) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from nlpkit.errors import redact_url
    from nlpkit.store import migrations

    database = state.database(check=False)
    database.upgrade(revision)
    now_at = migrations.current_revision(database.engine)
    # soft_wrap: one line however long the URL (sslrootcert=...), not cut at the console's width.
    stderr.print(f"{redact_url(database.url)} is at revision {now_at}", soft_wrap=True)


@db.command("downgrade")
@click.argument("revision")
@pass_state
def db_downgrade(state: CliState, revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes every table)."""
    from nlpkit.store import migrations

    database = state.database(check=False)
    migrations.downgrade(database.engine, revision)
    stderr.print(f"now at revision {migrations.current_revision(database.engine) or 'base'}")


@db.command("current")
@pass_state
def db_current(state: CliState) -> None:
    """Print the database's schema revision."""
    from nlpkit.store import migrations

    click.echo(migrations.current_revision(state.database(check=False).engine) or "base (no schema)")


@db.command("history")
def db_history() -> None:
    """List the migrations, newest first."""
    from nlpkit.store import migrations

    for revision, parent, message in migrations.history():
        click.echo(f"{parent or 'base'} -> {revision}: {message.splitlines()[0] if message else ''}")


COMMANDS = (db,)
