"""nlpkit-langid: language identification for nlpkit, and an example of a third-party plugin.

Installing the distribution is all it takes: its ``nlpkit`` entry point names this
module, whose two hook implementations add the ``langid`` task and the ``nlpkit langid``
commands. Nothing heavy is imported here, so ``nlpkit plugins`` and ``nlpkit --help``
stay quick; torch comes in only when a command or a model needs it.
"""

from nlpkit import hookimpl

from nlpkit_langid.task import LanguageIdTask

__all__ = ["LanguageIdTask"]


@hookimpl
def register_tasks(register):
    register(LanguageIdTask)


@hookimpl
def register_commands(cli):
    from nlpkit_langid.commands import langid

    cli.add_command(langid)
