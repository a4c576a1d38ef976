"""Model directories on disk: finding them, naming their revision, reading their config, tokenizer
and nlpkit.json; the starter backbone; converting BERT to DistilBERT (``nlpkit.models.convert``);
and the [CLS]-only last layer of sequence classifiers (``nlpkit.models.cls_only``).

Depends only on ``nlpkit.errors`` (and tasks' contract, never on inference, store, stream or
cli). What is re-exported here imports no torch; the two modules that need it are imported
by name where they are used.
"""

from nlpkit.models.files import (
    ModelLookup,
    model_revision,
    quiet_loading,
    read_config,
    read_metadata,
    resolve_model_path,
    write_metadata,
)
from nlpkit.models.starter import starter_model_path

__all__ = [
    "ModelLookup",
    "model_revision",
    "quiet_loading",
    "read_config",
    "read_metadata",
    "resolve_model_path",
    "starter_model_path",
    "write_metadata",
]
