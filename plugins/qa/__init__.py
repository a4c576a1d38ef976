"""The built-in extractive QA plugin: registers the ``qa`` task and ``nlpkit split-squad``."""

from nlpkit import hookimpl
from nlpkit_plugins.qa.task import QaTask

__all__ = ["QaTask"]


@hookimpl
def register_tasks(register):
    register(QaTask)


@hookimpl
def register_commands(cli):
    from nlpkit_plugins.qa.commands import split_squad

    cli.add_command(split_squad)
