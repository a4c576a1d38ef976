"""The contract between nlpkit and its plugins.

Every hook below is called by nlpkit; a plugin implements the ones it needs with
``@nlpkit.hookimpl`` on a module-level function of the same name. Built-in plugins
(sentiment, trainer, ...) use exactly these hooks, so reading them is the quickest way
to see a complete example.

A plugin is an importable module (or any object with hook functions) exposed under
the ``nlpkit`` entry-point group::

    [project.entry-points.nlpkit]
    my_plugin = "my_package.plugin_module"

Hooks are called with keyword arguments; an implementation may accept any subset of
the arguments a spec names, in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from nlpkit.tasks import Task

hookspec = pluggy.HookspecMarker("nlpkit")
hookimpl = pluggy.HookimplMarker("nlpkit")


@dataclass
class StoredBatch:
    """What one worker transaction stored for one task: the argument of ``predictions_stored``.

    ``predictions`` and ``dead_letters`` are the rows as written (dicts of the table's
    columns); ``model`` is the name of the model that task ran; ``topic_offsets`` maps each
    (topic, partition) of the poll to the offset after its last message.
    """

    task: str
    model: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    topic_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


@hookspec
def register_tasks(register: Callable[[type[Task]], None]) -> None:
    """Make tasks available to ``nlpkit predict``, ``consume``, ``train`` and ``evaluate``.

    Called once, when nlpkit first needs the task table. Call ``register(TaskClass)``
    for each :class:`nlpkit.Task` subclass the plugin provides; the class's
    ``name`` attribute is the name users type (``nlpkit predict NAME``). Two plugins
    registering the same name is an error that names both plugins.

    Example::

        @nlpkit.hookimpl
        def register_tasks(register):
            register(LanguageIdTask)
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``nlpkit`` command line.

    Called once while the CLI is being built, before arguments are parsed. ``cli`` is
    the top-level :class:`click.Group`; decorate new commands with ``@cli.command()``
    or add groups with ``cli.add_command(group)``. Keep commands thin: parse options,
    call your library code, print the result. Raise :class:`click.ClickException`
    for errors the user can fix; nlpkit prints it as one line.

    Example::

        @nlpkit.hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from my plugin")
    """


@hookspec
def predictions_stored(batch: StoredBatch) -> None:
    """React to predictions that have just been committed to the database.

    Called by the Kafka worker after each database transaction commits and before
    the consumer offsets are committed to Kafka, once per task the transaction stored
    rows for, with a :class:`nlpkit.StoredBatch` of that task's rows and the name of the
    model that ran it (``task``, ``model``, ``predictions``, ``dead_letters``,
    ``topic_offsets``). Use it
    for notifications, metrics or exports. It runs on the worker's hot path: hand
    slow work to a queue or thread. An exception raised here is logged and does not
    undo the stored rows; because delivery is at-least-once, the same rows can be
    reported again after a worker restart, so make side effects idempotent.
    """


def hook_names() -> list[str]:
    """The names of every hook in this contract, for listings and documentation checks."""
    return sorted(name for name, value in globals().items() if _is_hookspec(value))


def _is_hookspec(value: Any) -> bool:
    return callable(value) and hasattr(value, "nlpkit_spec")
