"""The one place nlpkit keeps what it can rebuild: downloads, service data, ONNX files of read-only models.

``NLPKIT_CACHE_DIR`` wins; else ``$XDG_CACHE_HOME/nlpkit``; else ``~/.cache/nlpkit``. Every
cache path in nlpkit is under this directory, so one variable moves (or clears) them all.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """nlpkit's cache directory (not created here: its users make the subdirectories they need)."""
    override = os.environ.get("NLPKIT_CACHE_DIR")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nlpkit"
