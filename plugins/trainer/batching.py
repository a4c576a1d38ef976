"""Batches for training: grouped by length so little compute goes to padding."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from nlpkit.tasks.base import EncodedExample

# How many batches' worth of examples are sorted together. Large enough that batches
# hold similar lengths, small enough that the order stays random from epoch to epoch.
POOL_BATCHES = 50
# Label value the transformers heads' cross-entropy ignores (padding, sub-word continuations).
IGNORE_INDEX = -100


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within pools of ``POOL_BATCHES`` batches by length, cut, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool_size = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda index: lengths[index], reverse=True)
        batches.extend(pool[i : i + batch_size] for i in range(0, len(pool), batch_size))
    rng.shuffle(batches)
    return batches


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) padded to the longest sequence."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def collate(features: Sequence[EncodedExample], pad_id: int, token_level: bool) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member; per-token labels are padded with -100 (ignored by the loss)."""
    input_ids, attention_mask = pad([feature.input_ids for feature in features], pad_id)
    longest = input_ids.shape[1]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if features[0].labels is not None:  # QA features carry start/end positions in ``extra`` instead
        batch["labels"] = _labels(features, longest, token_level)
    for key in features[0].extra:
        batch[key] = torch.tensor([feature.extra[key] for feature in features])
    return batch


def _labels(features: Sequence[EncodedExample], longest: int, token_level: bool) -> torch.Tensor:
    if token_level:
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            labels[row, : len(feature.labels)] = torch.tensor(feature.labels)
        return labels
    return torch.tensor([feature.labels for feature in features])
