"""The built-in trainer plugin: adds ``nlpkit train`` and ``nlpkit distill`` to the CLI."""

from nlpkit import hookimpl


@hookimpl
def register_commands(cli):
    from nlpkit_plugins.trainer.commands import distill, train

    cli.add_command(train)
    cli.add_command(distill)
