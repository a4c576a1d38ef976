"""The one error the local services raise."""

from __future__ import annotations

from nlpkit.errors import NlpkitError


class ServiceError(NlpkitError):
    """A local service could not be fetched, started, reached or stopped.

    ``summary`` is one line fit for the CLI; ``details`` (a log or tool-output tail) is
    kept apart so a test failure shows everything while the CLI stays one line.
    """

    def __init__(self, summary: str, details: str = "") -> None:
        super().__init__(summary)
        self.summary = summary
        self.details = details

    def __str__(self) -> str:
        return f"{self.summary}\n{self.details}" if self.details else self.summary
