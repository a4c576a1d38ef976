"""The built-in NER plugin: registers the ``ner`` task."""

from nlpkit import hookimpl
from nlpkit_plugins.ner.task import NerTask

__all__ = ["NerTask"]


@hookimpl
def register_tasks(register):
    register(NerTask)
