"""Students made from teachers: keep some layers, check that the two can learn from each other."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from transformers import PreTrainedModel

from nlpkit.errors import NlpkitError
from nlpkit.models.convert import select_layers

_LAYER = re.compile(r"^(.*transformer\.layer\.)(\d+)\.(.*)$")


def student_from_teacher(teacher: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A copy of a DistilBERT ``teacher`` (with whatever head it has) keeping only ``layers``.

    Embeddings and the head are copied as they are and the chosen transformer layers
    become the student's layers 0, 1, ...: the DistilBERT paper's initialisation, which
    it calls crucial (every other layer of the teacher).
    """
    if teacher.config.model_type != "distilbert":
        raise NlpkitError(
            f"students are made from DistilBERT teachers; this one is '{teacher.config.model_type}' "
            "(convert it first with `nlpkit models convert`)"
        )
    kept = select_layers(layers, teacher.config.n_layers)
    config = copy.deepcopy(teacher.config)
    config.n_layers = len(kept)
    student = type(teacher)(config)
    state = {}
    for name, tensor in teacher.state_dict().items():
        match = _LAYER.match(name)
        if match is None:
            state[name] = tensor.clone()
        elif int(match[2]) in kept:
            state[f"{match[1]}{kept.index(int(match[2]))}.{match[3]}"] = tensor.clone()
    student.load_state_dict(state, strict=True)
    return student


def check_compatible(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """Soft targets over a vocabulary and a cosine between hidden states need the same
    vocabulary, width and positions; anything else is a clear error, not a shape crash."""
    for field, meaning in (
        ("vocab_size", "vocabulary"),
        ("dim", "hidden size"),
        ("max_position_embeddings", "maximum positions"),
    ):
        theirs, ours = getattr(teacher.config, field, None), getattr(student.config, field, None)
        if theirs != ours:
            raise NlpkitError(
                f"teacher and student must share the {meaning}: the teacher has {theirs}, the student {ours}"
            )
