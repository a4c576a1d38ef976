"""Distillation losses.

General distillation is DistilBERT's triple loss: soft-target KL divergence between the
student's and the teacher's masked-LM distributions at a temperature T (scaled by T²
so its gradients keep their size as T changes), the student's own masked-LM loss, and a
cosine loss pulling the student's last hidden states towards the teacher's. Task-specific
distillation mixes the task's own loss with the KL divergence from a fine-tuned
teacher's soft targets (start and end distributions for QA).

A term whose weight is zero is not computed at all, and a term with nothing to score (no
masked token, say) contributes an exact zero that still carries a gradient path, so a
batch never yields NaN or a graph without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TripleLossWeights:
    """DistilBERT's published setting: 5.0 / 2.0 / 1.0 at temperature 2."""

    ce: float = 5.0
    mlm: float = 2.0
    cos: float = 1.0
    temperature: float = 2.0


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) over the last dimension at ``temperature``, times T², per row averaged."""
    if student_logits.numel() == 0:
        return student_logits.sum() * 0.0
    return (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.softmax(teacher_logits / temperature, dim=-1),
            reduction="batchmean",
        )
        * temperature**2
    )


def hidden_cosine(student_states: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity, averaged over rows of (rows, dim) hidden states: the direction of the
    teacher's representation, whatever its scale."""
    return F.cosine_embedding_loss(student_states, teacher_states, student_states.new_ones(student_states.shape[0]))


def triple_loss(
    student_logits: torch.Tensor,
    student_hidden: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_hidden: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    weights: TripleLossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum and each term's value. Logits are (batch, length, vocab), hidden
    states (batch, length, dim); ``labels`` are -100 except at masked positions."""
    real = attention_mask.bool()
    anchor = student_logits.sum() * 0.0  # zero with a gradient path, for terms with nothing to add
    terms: dict[str, torch.Tensor] = {}
    if weights.ce:
        terms["ce"] = soft_target_kl(student_logits[real], teacher_logits[real], weights.temperature)
    if weights.mlm:
        masked = labels != -100
        terms["mlm"] = F.cross_entropy(student_logits[masked], labels[masked]) if masked.any() else anchor
    if weights.cos:
        terms["cos"] = hidden_cosine(student_hidden[real], teacher_hidden[real]) if real.any() else anchor
    total = sum((getattr(weights, name) * value for name, value in terms.items()), anchor)
    return total, {name: float(value.detach()) for name, value in terms.items()}


@dataclass(frozen=True)
class TaskDistillationWeights:
    """Soft targets and gold labels half and half at T = 2, as transformers' SQuAD distillation did;
    the cosine term on the last hidden states (DistilBERT's third loss, off by default) passes the
    teacher more than a two-way softmax can carry: a whole representation per example."""

    ce: float = 0.5
    task: float = 0.5
    cos: float = 0.0
    temperature: float = 2.0


def last_hidden_cosine(
    student: Any, teacher: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], token_level: bool
) -> torch.Tensor:
    """The cosine loss between the student's last hidden states (it must have been run with
    ``output_hidden_states``) and the teacher's under ``hidden``: the first position for heads
    that read one vector per sequence, every real token for per-token heads."""
    last = student.hidden_states[-1]
    if not token_level:
        return hidden_cosine(last[:, 0], teacher["hidden"])
    real = batch["attention_mask"].bool()
    return hidden_cosine(last[real], teacher["hidden"][real])


def task_soft_target_loss(
    kind: str,
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """KL from the teacher's soft targets, for the head ``kind``:

    - ``single``: one softmax per sequence;
    - ``multi``: an independent sigmoid per label (binary cross-entropy against the
      teacher's tempered probabilities, times T²);
    - ``token``: one softmax per token, over the tokens that carry a training label;
    - ``span``: start and end distributions over the sequence (padding excluded), averaged.
    """
    if kind == "single":
        return soft_target_kl(student["logits"], teacher["logits"], temperature)
    if kind == "multi":
        targets = torch.sigmoid(teacher["logits"] / temperature)
        return F.binary_cross_entropy_with_logits(student["logits"] / temperature, targets) * temperature**2
    if kind == "token":
        labelled = batch["labels"] != -100
        return soft_target_kl(student["logits"][labelled], teacher["logits"][labelled], temperature)
    if kind == "span":
        padding = (1 - batch["attention_mask"]) * -1e4
        return (
            sum(
                soft_target_kl(student[key] + padding, teacher[key] + padding, temperature)
                for key in ("start_logits", "end_logits")
            )
            / 2
        )
    raise ValueError(f"unknown head kind '{kind}'")
