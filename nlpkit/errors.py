"""Errors a user can act on.

Everything nlpkit raises on purpose derives from :class:`NlpkitError`; the CLI prints
such errors as one line (no traceback unless ``--debug``), so the message must say
what went wrong and, where there is one, what to run instead.
"""


class NlpkitError(Exception):
    """An error with a message written for the person at the terminal."""


class PluginLoadError(NlpkitError):
    """A plugin could not be imported or registered."""


class UnknownTaskError(NlpkitError):
    """No loaded plugin provides the requested task."""


class ModelNotFoundError(NlpkitError):
    """A model reference resolves to nothing usable on this machine."""


class InvalidRecordError(NlpkitError):
    """An input record is missing fields or has the wrong types; the message is the reason."""


class DataFormatError(NlpkitError):
    """A data file cannot be read; the message names the file and, where known, the line."""


class DatabaseNotReadyError(NlpkitError):
    """The database schema is missing or older than this version of nlpkit expects."""
