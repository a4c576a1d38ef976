"""Schema migrations through Alembic, driven from Python so ``nlpkit db`` needs no alembic.ini.

The migration scripts live in the repository's ``migrations/`` directory, installed as
the ``nlpkit_migrations`` package so an installed nlpkit finds them too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine

import nlpkit_migrations
from nlpkit.errors import NlpkitError


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at nlpkit's migrations, bound to ``engine`` when given."""
    config = Config()
    config.set_main_option("script_location", str(Path(nlpkit_migrations.__file__).parent))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(command.upgrade, engine, revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(command.downgrade, engine, revision)


def _run(step: Callable[[Config, str], None], engine: Engine, revision: str) -> None:
    try:
        step(alembic_config(engine), revision)
    except CommandError as exc:  # an unknown or ambiguous revision: the user's to fix
        raise NlpkitError(f"{exc}; see `nlpkit db history`") from exc


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def history() -> list[tuple[str, str | None, str]]:
    """(revision, parent, message) from newest to oldest."""
    script = ScriptDirectory.from_config(alembic_config())
    return [(rev.revision, rev.down_revision, rev.doc or "") for rev in script.walk_revisions()]  # type: ignore[misc]
