"""Models for benchmarks where no fine-tuned one exists: the starter 6-layer BERT as DistilBERT
with a seeded random head of the task's kind.

The figures such a model gives are about speed and about whether two ways of running it
give the same answers; its answers are not meant to be right. Its nlpkit.json says so.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nlpkit.system.cache import cache_dir


def starter_with_head(name: str, head_class: str, labels: list[str] | None = None, seed: int = 0) -> Path:
    """``~/.cache/nlpkit/bench-models/NAME``, built once.

    Built in a scratch directory and renamed into place, so an interrupted build never
    leaves a half-written model that later runs would take for a finished one.
    """
    import torch
    import transformers
    from transformers import AutoTokenizer

    from nlpkit.models.convert import convert_bert_to_distilbert
    from nlpkit.models.files import quiet_loading, write_metadata
    from nlpkit.models.starter import starter_model_path

    target = cache_dir() / "bench-models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        base = convert_bert_to_distilbert(starter_model_path(), scratch / "base")
        head = {}
        if labels:
            head = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
        torch.manual_seed(seed)
        with quiet_loading():
            model = getattr(transformers, head_class).from_pretrained(base, **head)
            model.save_pretrained(scratch / "model")
        AutoTokenizer.from_pretrained(base).save_pretrained(scratch / "model")
        write_metadata(scratch / "model", untrained_head=f"random {head_class} head, torch.manual_seed({seed})")
        (scratch / "model").rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
