"""What every ``nlpkit`` command shares: the state the top-level options set, one-line
errors, and the parameter types several commands use.

Plugins that add commands import :data:`pass_state` and :class:`CliState` from here (or
from ``nlpkit.cli``, which re-exports them).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from nlpkit import settings
from nlpkit.errors import NlpkitError, error_line
from nlpkit.inference.backends import BACKEND_HELP, BACKENDS

if TYPE_CHECKING:
    from nlpkit.store import ModelEntry

# predict, evaluate and consume: "auto" (the default) or a backend by name. bench and quantize name backends only.
BACKEND_OPTION: dict[str, Any] = {
    "type": click.Choice(["auto", *BACKENDS]),
    "default": "auto",
    "show_default": True,
    "help": "How the model runs. auto: the fastest backend that agrees with fp32 on this machine, as "
    "`nlpkit models tune` recorded it for the model (tuned on first use where data is at hand, else onnx); "
    f"{BACKEND_HELP}.",
}


def auto_backend_here(entry: ModelEntry) -> str | None:
    """The backend ``--backend auto`` runs a registered model on here, as `nlpkit models tune` recorded it
    for its weights and this machine; None where nothing is recorded (``models list``, ``status``)."""
    from nlpkit.inference.tuning import recorded_choice

    return recorded_choice(entry.path, entry.revision, settings.get_fraction("min_agreement"))


@dataclass
class CliState:
    database_url: str | None = None
    debug: bool = False

    def database(self, check: bool = True) -> Any:
        """The configured database; with ``check``, refuse one that needs ``nlpkit db upgrade``."""
        from nlpkit.store import Database

        database = Database(settings.get("database_url", self.database_url))
        if check:
            database.check_schema()
        return database


class NlpkitGroup(click.Group):
    """Prints errors a user can act on as one line; ``--debug`` shows the traceback instead."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except (NlpkitError, SQLAlchemyError, OSError) as exc:
            if _debugging(ctx):
                raise
            raise click.ClickException(one_line(exc)) from None


def one_line(exc: BaseException) -> str:
    """An exception as the single line the CLI prints (a database's errors say so)."""
    from sqlalchemy.exc import SQLAlchemyError

    line = error_line(exc)
    return f"database error: {line}" if isinstance(exc, SQLAlchemyError) else line


def _debugging(ctx: click.Context) -> bool:
    state = ctx.find_object(CliState)
    return bool(state and state.debug) or os.environ.get("NLPKIT_DEBUG") == "1"


_pass_state_object = click.make_pass_decorator(CliState)


def _remember_database_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(CliState).database_url = value


# ``--database-url`` on a command itself, so the URL can follow the command as every other option
# does (``nlpkit db upgrade --database-url URL``) as well as precede it (``nlpkit --database-url URL
# db upgrade``). Every command that takes the CliState (see pass_state) has it.
DATABASE_URL_OPTION: dict[str, Any] = {
    "metavar": "URL",
    "expose_value": False,
    "callback": _remember_database_url,
    "help": "SQLAlchemy database URL [env NLPKIT_DATABASE_URL].",
}


def pass_state(function: Any) -> Any:
    """Hands a command the :class:`CliState`, and gives it ``--database-url`` of its own."""
    return click.option("--database-url", **DATABASE_URL_OPTION)(_pass_state_object(function))


def bootstrap_option(function: Any) -> Any:
    """``--bootstrap-servers``, for every command that talks to Kafka."""
    return click.option(
        "--bootstrap-servers", metavar="HOSTS", help="Kafka bootstrap servers [env NLPKIT_BOOTSTRAP_SERVERS]."
    )(function)


def layer_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    """Option callback: ``0,2,4`` as ``[0, 2, 4]``."""
    if value is None:
        return None
    try:
        return [int(index) for index in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer numbers such as 0,2,4, got {value!r}") from None


def key_values(_ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]) -> dict[str, str]:
    """Option callback: repeated ``KEY=VALUE`` as a dict, checked before any work starts."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got '{item}'")
        pairs[key] = value
    return pairs


class MomentParam(click.ParamType):
    """A point in time: ISO 8601 (``2026-11-21``, ``2026-11-21T08:00``, UTC unless an offset
    is given) or an age such as ``90s``, ``30m``, ``2h``, ``7d`` meaning that long ago."""

    name = "TIME"
    _AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
    _UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        age = self._AGE.match(text)
        if age:
            amount, unit = age.groups()
            return dt.datetime.now(dt.UTC) - dt.timedelta(**{self._UNITS[unit]: float(amount)})
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"'{text}' is neither an ISO date/time nor an age like 30m, 2h or 7d", param, ctx)
        # Stored times are UTC (SQLite keeps them without an offset), so filters compare in UTC too.
        return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


MOMENT = MomentParam()


def options_by_task(tasks: Sequence[str], items: dict[str, str]) -> dict[str, dict[str, str]]:
    """``-o [TASK.]NAME=VALUE`` settings per task; a bare NAME goes to every task that has it."""
    from nlpkit.plugins import get_task_class

    options: dict[str, dict[str, str]] = {task: {} for task in tasks}
    for target, value in items.items():
        task, _, name = target.rpartition(".")
        chosen = [task] if task else [t for t in tasks if name in {o.name for o in get_task_class(t).options}]
        if not chosen or (task and task not in tasks):
            raise click.BadParameter(f"no task here has an option '{target}'", param_hint="-o")
        for each in chosen:
            options[each][name] = value
    return options


def decoding_options(function: Any) -> Any:
    """How keys and values are read (see nlpkit.stream.decoding): the options ``consume`` and
    ``dead-letters replay --direct`` share, so a dead letter is read again as its worker read it."""
    from nlpkit.stream.decoding import KEY_FORMATS, VALUE_FORMATS

    options = [
        click.option(
            "--value-format",
            type=click.Choice(VALUE_FORMATS),
            default="auto",
            show_default=True,
            help="How values are read; auto: registry records (magic byte 0) if a registry is set, else JSON or text.",
        ),
        click.option(
            "--key-format",
            type=click.Choice(KEY_FORMATS),
            default="bytes",
            show_default=True,
            help="How keys are read: bytes (the id where they are text), or a registry format (the id is the record).",
        ),
        click.option("--schema-registry", metavar="URL", help="Schema Registry URL [env NLPKIT_SCHEMA_REGISTRY_URL]."),
        click.option(
            "--field",
            "fields",
            multiple=True,
            metavar="NAME=PATH",
            callback=key_values,
            help="Read a task input (or id, task) from a path in nested records, e.g. text=review.body (repeatable).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function
