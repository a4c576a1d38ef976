"""nlpkit: DistilBERT task plugins fed from Kafka, stored in SQL, trained and distilled in place."""

import importlib.metadata

from nlpkit.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = importlib.metadata.version("nlpkit")
