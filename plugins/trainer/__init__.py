"""The built-in trainer plugin: adds ``nlpkit train`` (and, later, distillation) to the CLI."""

from nlpkit import hookimpl


@hookimpl
def register_commands(cli):
    from nlpkit_plugins.trainer.commands import train

    cli.add_command(train)
