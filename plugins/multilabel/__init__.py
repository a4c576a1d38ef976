"""The built-in multi-label plugin: registers the ``multilabel`` task and ``nlpkit tune-thresholds``."""

from nlpkit import hookimpl
from nlpkit_plugins.multilabel.task import MultilabelTask

__all__ = ["MultilabelTask"]


@hookimpl
def register_tasks(register):
    register(MultilabelTask)


@hookimpl
def register_commands(cli):
    from nlpkit_plugins.multilabel.commands import tune_thresholds

    cli.add_command(tune_thresholds)
