"""Masked-LM targets the way DistilBERT was distilled.

Per batch, ``ceil(15% × real tokens)`` positions are drawn without replacement with
probabilities ``count(token) ** -0.7`` (rare tokens are masked more often, as in XLM and
word2vec; special tokens and padding never), then 80% of them become [MASK], 10% a
random token and 10% stay as they are. Labels are the original ids there and -100
elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


def token_counts(sequences: Iterable[Sequence[int]], vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in sequences:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
    return counts


class Masker:
    def __init__(
        self,
        counts: np.ndarray,
        special_ids: Sequence[int],
        mask_id: int,
        *,
        rate: float = 0.15,
        smoothing: float = 0.7,
        seed: int = 0,
    ) -> None:
        probabilities = np.maximum(counts, 1).astype(np.float64) ** -smoothing
        probabilities[list(special_ids)] = 0.0
        self.weights = torch.tensor(probabilities, dtype=torch.float32)
        self.mask_id = mask_id
        self.vocab_size = len(counts)
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels) for a padded batch."""
        candidates = (self.weights[input_ids] * attention_mask).flatten()
        available = int((candidates > 0).sum())
        wanted = min(math.ceil(self.rate * int(attention_mask.sum())), available)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        masked = input_ids.clone()
        if wanted == 0:
            return masked, labels
        chosen = torch.multinomial(candidates, wanted, replacement=False, generator=self.generator)
        flat_ids, flat_labels, flat_masked = input_ids.flatten(), labels.view(-1), masked.view(-1)
        flat_labels[chosen] = flat_ids[chosen]
        action = torch.rand(wanted, generator=self.generator)
        to_mask, to_random = chosen[action < 0.8], chosen[(action >= 0.8) & (action < 0.9)]
        flat_masked[to_mask] = self.mask_id
        flat_masked[to_random] = torch.randint(self.vocab_size, (len(to_random),), generator=self.generator)
        return masked, labels
