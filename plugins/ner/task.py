"""Named entities: token classification into character spans of the original text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nlpkit import EncodedExample, Example, NlpkitError, Prediction, Record, Task, TaskOption, Window, metrics, softmax
from nlpkit_plugins.ner.aggregation import STRATEGIES, Token, mark_cuts, merge_windows, window_entities
from nlpkit_plugins.ner.data import read_ner_examples

IGNORE_INDEX = -100


@dataclass(frozen=True)
class _WindowInfo:
    offsets: list[tuple[int, int]]
    special: list[int]
    subword: list[bool]
    cut_before: bool
    cut_after: bool


class NerTask(Task):
    """Entities with type, character start/end, the exact source text and a score.

    Texts longer than the model's maximum are read in windows overlapping by ``stride``
    tokens and merged, so nothing past the maximum is dropped.
    """

    name = "ner"
    description = "named entities: type, character start/end, text and score (token classification)"
    input_fields = ("text",)
    model_class = "AutoModelForTokenClassification"
    token_level_outputs = True
    # Training labels each word's first token only, so scoring reads each word's tag from its first
    # token, on the data's own words (see word_tags).
    evaluation_options = {"aggregation": "none"}
    options = (
        TaskOption("aggregation", str, "simple", "how token labels become entities", choices=STRATEGIES),
        TaskOption(
            "stride", int, None, "tokens shared by neighbouring windows of a long text [a quarter of the maximum]"
        ),
    )

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(model, **options)
        room = self.model.max_length - 2  # [CLS] and [SEP]
        self.stride = room // 4 if self.settings["stride"] is None else self.settings["stride"]
        if not 0 <= self.stride < room:
            raise NlpkitError(f"--stride must be between 0 and {room - 1} for this model (got {self.stride})")
        tokenizer_model = getattr(getattr(self.model.tokenizer, "_tokenizer", None), "model", None)
        self.word_aware = bool(getattr(tokenizer_model, "continuing_subword_prefix", None))

    def windows(self, records: Sequence[Record]) -> list[list[Window]]:
        texts = [record.fields["text"] for record in records]
        encoded = self.model.tokenizer(
            texts,
            truncation=True,
            max_length=self.model.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
        )
        samples = encoded["overflow_to_sample_mapping"]
        windows: list[list[Window]] = [[] for _ in records]
        for index, sample in enumerate(samples):
            text = texts[sample]
            tokens = encoded.encodings[index].tokens
            offsets = [tuple(pair) for pair in encoded["offset_mapping"][index]]
            unknown = self.model.tokenizer.unk_token_id
            subword = [
                self._is_subword(text, token, start, end, token_id == unknown)
                for token, (start, end), token_id in zip(tokens, offsets, encoded["input_ids"][index], strict=True)
            ]
            info = _WindowInfo(
                offsets=offsets,
                special=list(encoded["special_tokens_mask"][index]),
                subword=subword,
                cut_before=index > 0 and samples[index - 1] == sample,
                cut_after=index + 1 < len(samples) and samples[index + 1] == sample,
            )
            windows[sample].append(Window(encoded["input_ids"][index], info))
        return windows

    def _is_subword(self, text: str, token: str, start: int, end: int, unknown: bool) -> bool:
        """Whether a token continues the previous word (transformers' token-classification rule)."""
        if unknown:
            return False
        if self.word_aware:  # WordPiece-style: a "##" piece is longer than the text it covers
            return len(token) != end - start
        return start > 0 and " " not in text[start - 1 : start + 1]

    def postprocess(
        self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]
    ) -> Prediction:
        text = record.fields["text"]
        id2label = self.model.id2label
        found = []
        for window, output in zip(windows, outputs, strict=True):
            info: _WindowInfo = window.context
            scores = softmax(output["logits"])
            tokens = [
                Token(position, start, end, scores[position], info.subword[position])
                for position, ((start, end), special) in enumerate(zip(info.offsets, info.special, strict=True))
                if not special
            ]
            if not tokens:
                continue
            entities = window_entities(tokens, id2label, self.settings["aggregation"])
            found.extend(
                mark_cuts(
                    entities,
                    tokens[0].position,
                    tokens[-1].position,
                    cut_before=info.cut_before,
                    cut_after=info.cut_after,
                )  # fmt: skip
            )
        entities = merge_windows(found) if len(windows) > 1 else found
        output = {
            "entities": [
                {"type": e.label, "start": e.start, "end": e.end, "text": text[e.start : e.end], "score": e.score}
                for e in entities
            ]
        }
        best = max(output["entities"], key=lambda entity: entity["score"], default=None)
        return Prediction(best and best["type"], best and best["score"], output)

    # --- training and evaluation ----------------------------------------------------------------

    @classmethod
    def read_examples(cls, path: Path) -> list[Example]:
        """CoNLL-2003 files (IOB1 converted to BIO) or JSON lines with ``tokens`` and ``tags``."""
        return read_ner_examples(path)

    @classmethod
    def label_names(cls, examples: Sequence[Example]) -> list[str]:
        tags = {tag for example in examples for tag in example.target["tags"]}
        return ["O", *sorted(tags - {"O"}, key=lambda tag: (tag[2:], tag))]

    def encode_examples(self, examples: Sequence[Example], max_length: int) -> list[EncodedExample]:
        """Label each word's first token; later pieces and special tokens are ignored by the loss."""
        label2id = {name: index for index, name in self.model.id2label.items()}
        encoded = self.model.tokenizer(
            [example.target["words"] for example in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        features = []
        for index, example in enumerate(examples):
            tags = example.target["tags"]
            unknown = set(tags) - set(label2id)
            if unknown:
                raise NlpkitError(f"{example.source}: tag(s) {sorted(unknown)} are not among the model's labels")
            labels, previous = [], None
            for word in encoded.word_ids(index):
                labels.append(IGNORE_INDEX if word is None or word == previous else label2id[tags[word]])
                previous = word
            features.append(EncodedExample(input_ids=encoded["input_ids"][index], labels=labels))
        return features

    @classmethod
    def score(cls, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """Entity-level F1, precision and recall (seqeval's rules) on word-level tags."""
        gold = [example.target["tags"] for example in examples]
        predicted = [
            word_tags(example.target["words"], prediction.output["entities"])
            for prediction, example in zip(predictions, examples, strict=True)
        ]
        return metrics.entity_scores(gold, predicted)


def word_tags(words: Sequence[str], entities: Sequence[Mapping[str, Any]]) -> list[str]:
    """BIO tags for space-joined ``words`` from the entities predicted for that text.

    Token-level entities (aggregation ``none``: types keep their B-/I- prefix) give each
    word the tag of the token it starts with: the labelling the model was trained on, and
    the standard CoNLL evaluation. Grouping tokens into words first would not do: the
    pipelines' rule makes punctuation a word of its own, so "P. Johnson" (two CoNLL words)
    becomes the entities "P" and ". Johnson". Aggregated entities give each word the
    entity it overlaps, and an entity's first word gets B-.
    """
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    if entities and all(entity["type"][:2] in ("B-", "I-") for entity in entities):
        first_tokens = {entity["start"]: entity["type"] for entity in entities}
        return [first_tokens.get(start, "O") for start in starts]
    tags = ["O"] * len(words)
    for entity in entities:
        covered = [
            index for index, start in enumerate(starts)
            if start < entity["end"] and start + len(words[index]) > entity["start"]
        ]  # fmt: skip
        for order, index in enumerate(covered):
            tags[index] = ("B-" if order == 0 else "I-") + entity["type"]
    return tags
