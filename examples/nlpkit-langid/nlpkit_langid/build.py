"""Building the model: a WordPiece tokenizer and a tiny DistilBERT, both made from the corpus.

Nothing is downloaded. The tokenizer's vocabulary is the training sentences' own
characters, words and character n-grams, and a two-layer, 64-wide DistilBERT classifier
learns the languages from them in a few seconds on a CPU. Every sixth sentence, in all
languages at once, is held out, so the reported accuracy is on sentences whose content
the model never saw in any language.

The result is an ordinary model directory (config, weights, ``tokenizer.json``,
``nlpkit.json``) that nlpkit loads like any other: ``--model DIR``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from nlpkit import quiet_loading, write_metadata
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

from nlpkit_langid.corpus import SENTENCES

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first: id 0
MAX_TOKENS = 128  # a sentence or two is plenty to tell these languages apart
VOCABULARY_SIZE = 700
NGRAM_MAX = 3
# Lower-case, but accents kept: they are half of what tells French from Spanish.
NORMALIZER = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()  # words and punctuation apart
HELD_OUT_EVERY = 6


@dataclass(frozen=True)
class BuildReport:
    """What was built: where, for which languages, and how well it does on held-out sentences."""

    path: Path
    languages: list[str]
    held_out_accuracy: float
    held_out_count: int


def build_model(dest: Path, *, epochs: int = 30, seed: int = 0) -> BuildReport:
    """Learn a tokenizer and a classifier from the built-in corpus and save them to ``dest``."""
    languages = sorted(SENTENCES)
    train, held_out = _split(languages)
    tokenizer = _tokenizer([text for text, _label in train])
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(_config(languages, len(tokenizer)))
    with _one_thread():
        _fit(model, _encode(tokenizer, train), epochs, random.Random(seed))
        accuracy = _accuracy(model, _encode(tokenizer, held_out))
    dest.mkdir(parents=True, exist_ok=True)
    with quiet_loading():
        model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    write_metadata(dest, task="langid", held_out_accuracy=accuracy)
    return BuildReport(dest, languages, accuracy, len(held_out))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Matrices this small gain nothing from threads; on a busy 2-core machine two threads
    made training twenty times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _split(languages: list[str]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    train, held_out = [], []
    for label, language in enumerate(languages):
        for index, text in enumerate(SENTENCES[language]):
            (held_out if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append((text, label))
    return train, held_out


def _tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over the corpus's own character n-grams (see ``_vocabulary``)."""
    vocabulary = {token: index for index, token in enumerate(_vocabulary(texts))}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = NORMALIZER
    tokenizer.pre_tokenizer = PRE_TOKENIZER
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_TOKENS,
        model_input_names=["input_ids", "attention_mask"],  # DistilBERT takes no token_type_ids
    )


def _vocabulary(texts: list[str]) -> list[str]:
    """Special tokens, every character seen, then the most frequent words and character n-grams.

    N-grams of two or three characters, at the start of a word or (``##``) inside it, are
    the classic evidence for a language ("sch", "##ção", "##ent"), and they recur in words
    the corpus lacks. Counted here rather than by the ``tokenizers`` trainer, which breaks
    ties differently on every run: the same seed must give the same model.
    """
    words = Counter(
        word for text in texts for word, _span in PRE_TOKENIZER.pre_tokenize_str(NORMALIZER.normalize_str(text))
    )
    counts: Counter[str] = Counter()
    for word, count in words.items():
        counts[word] += count
        for length in range(2, min(len(word), NGRAM_MAX) + 1):
            counts[word[:length]] += count
            for start in range(1, len(word) - length + 1):
                counts["##" + word[start : start + length]] += count
    characters = sorted({character for word in words for character in word})
    alphabet = SPECIAL_TOKENS + characters + ["##" + character for character in characters]
    frequent = sorted(set(counts) - set(alphabet), key=lambda piece: (-counts[piece], piece))
    return alphabet + frequent[: VOCABULARY_SIZE - len(alphabet)]


def _config(languages: list[str], vocab_size: int) -> DistilBertConfig:
    return DistilBertConfig(
        vocab_size=vocab_size,
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=MAX_TOKENS,
        id2label=dict(enumerate(languages)),
        label2id={language: index for index, language in enumerate(languages)},
    )


def _encode(tokenizer: PreTrainedTokenizerFast, examples: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
    encoded = tokenizer([text for text, _label in examples], truncation=True, max_length=MAX_TOKENS)
    return list(zip(encoded["input_ids"], [label for _text, label in examples], strict=True))


def _fit(
    model: DistilBertForSequenceClassification, examples: list[tuple[list[int], int]], epochs: int, rng: random.Random
) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    for _epoch in range(epochs):
        order = list(examples)
        rng.shuffle(order)
        for start in range(0, len(order), 16):
            batch = order[start : start + 16]
            input_ids, attention_mask = _pad([ids for ids, _label in batch])
            labels = torch.tensor([label for _ids, label in batch])
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()


def _accuracy(model: DistilBertForSequenceClassification, examples: list[tuple[list[int], int]]) -> float:
    input_ids, attention_mask = _pad([ids for ids, _label in examples])
    with torch.inference_mode():
        predicted = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(-1).tolist()
    return sum(guess == label for guess, (_ids, label) in zip(predicted, examples, strict=True)) / len(examples)


def _pad(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.zeros(len(sequences), longest, dtype=torch.long)  # [PAD] is id 0
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
