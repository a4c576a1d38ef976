"""The built-in sentiment plugin: registers the ``sentiment`` task."""

from nlpkit import hookimpl
from nlpkit_plugins.sentiment.task import SentimentTask

__all__ = ["SentimentTask"]


@hookimpl
def register_tasks(register):
    register(SentimentTask)
