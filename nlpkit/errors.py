"""Errors a user can act on, and how any exception becomes the one line a person reads.

Everything nlpkit raises on purpose derives from :class:`NlpkitError`; the CLI prints
such errors as one line (no traceback unless ``--debug``), so the message must say
what went wrong and, where there is one, what to run instead. :func:`error_line` is the
only way nlpkit turns an exception into text for a terminal, a log or a dead letter, and
it always masks passwords in URLs.
"""

from __future__ import annotations

import re


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


# scheme://anything up to whitespace or a quote, not ending in the punctuation of the sentence around it.
URL_IN_TEXT = re.compile(r"\b[\w+]+://[^\s'\"]*[^\s'\":,.;)]")


def redact_urls_in(text: str) -> str:
    """``text`` with the password of every URL in it masked: for any message that may quote one."""
    return URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def redact_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<invalid database URL>"


def error_line(exc: BaseException) -> str:
    """An exception as one line: for a database error the driver's own first line (SQLAlchemy
    appends the statement and its parameters, which may hold user data), for a file error the
    file and what went wrong; passwords in URLs masked."""
    if isinstance(exc, OSError) and exc.filename:
        message = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(getattr(exc, "orig", None) or exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
    return redact_urls_in(message)
