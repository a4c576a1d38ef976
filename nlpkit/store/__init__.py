"""Where results live: the tables, the database (SQLite or PostgreSQL) and its migrations, the model
registry, the record of runs, and queries over stored predictions and dead letters.

Depends on nothing above it: no inference, stream or cli import here. Rows from Kafka are
upserted on their source coordinates, so whoever writes a batch twice overwrites it.
"""

from nlpkit.store.database import Database, migrated_database
from nlpkit.store.registry import ModelEntry
from nlpkit.store.runs import RunEntry
from nlpkit.store.tables import (
    Base,
    DeadLetterRow,
    ModelRow,
    PredictionRow,
    TombstoneRow,
    TrainingRunRow,
    as_utc,
    utcnow,
)

__all__ = [
    "Base",
    "Database",
    "DeadLetterRow",
    "ModelEntry",
    "ModelRow",
    "PredictionRow",
    "RunEntry",
    "TombstoneRow",
    "TrainingRunRow",
    "as_utc",
    "migrated_database",
    "utcnow",
]
