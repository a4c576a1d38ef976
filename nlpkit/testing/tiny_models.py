"""Tiny random models built on the fly, for nlpkit's tests and plugin authors' tests.

Unit tests never touch the Hugging Face hub (these machines are offline, and a test
that downloads is slow and flaky), and a real checkpoint makes every test take seconds.
The helpers here write complete model directories (config, safetensors weights and a
fast tokenizer) for models a few hundred kilobytes in size, so a test that loads,
trains or converts one stays well under a second.

The vocabulary is small but covers any lower-case ASCII text without ``[UNK]``, and
the position tables are short (64 by default) so tests can feed inputs longer than
the model maximum cheaply. Weights are random but deterministic for a seed.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
    DistilBertTokenizerFast,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from nlpkit.models.files import quiet_loading

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

_WORDS = """
the a an and or but if then than so because as of to in on at by for with from about into over after
before under between through during without again further once here there when where why how all any
both each few more most other some such no nor not only own same too very can will just should now
i me my we our you your he him his she her it its they them their what which who whom this that these
those am is are was were be been being have has had having do does did doing would could might must
one two three four five first last old long short big small high low early late young right
left great good bad best worst better worse terrible awful excellent amazing wonderful horrible poor
fine nice boring brilliant dull fun funny sad happy love loved hate hated like liked enjoy enjoyed
recommend waste perfect beautiful ugly strong weak positive negative neutral
movie movies film films actor actors actress story plot scene scenes script director music ending
character characters performance cast show series book time year day week people man woman child world
life work way thing things place home city country company market game team money price product service
food hotel room staff customer quality review reviews news report question answer
make made get got go went see saw know knew think thought take took come came want look use find give
tell say said ask feel try leave call watch watched read write play run keep let begin seem help talk
turn start hear buy sell pay meet
paris london new york berlin john mary google apple microsoft monday january
""".split()


def tiny_vocab() -> list[str]:
    """A small WordPiece vocabulary that tokenizes any lower-case ASCII text without ``[UNK]``.

    Special tokens come first so ``[PAD]`` is id 0 as in BERT; single letters, digits and
    punctuation plus a ``##`` piece for every letter and digit mean an unseen word still
    splits into known pieces, and a few hundred common words (sentiment words included)
    make typical test sentences tokenize the way a real vocabulary would.
    """
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    continuations = [f"##{char}" for char in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(SPECIAL_TOKENS + pieces + _WORDS + continuations))


def save_tiny_tokenizer(path: Path, *, model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """Write ``vocab.txt`` and a lower-casing DistilBERT fast tokenizer into ``path``.

    ``model_max_length`` is set explicitly (a tokenizer without one claims an absurd
    limit) and the tokenizer emits no ``token_type_ids``, which DistilBERT rejects.
    """
    return _save_tokenizer(DistilBertTokenizerFast, Path(path), model_max_length)


def save_tiny_bert(
    path: Path,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 64,
    seed: int = 0,
    mlm: bool = False,
) -> Path:
    """Save a random BERT (``BertForMaskedLM`` when ``mlm``, else ``BertModel``) and its tokenizer.

    It stands in for a real BERT checkpoint when testing the BERT-to-DistilBERT
    conversion: two token types whose embeddings are non-zero (so folding type 0 into
    the position table is really exercised), a BERT tokenizer that emits
    ``token_type_ids``, and every weight perturbed so wiring mistakes show up.
    """
    config = BertConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
    )
    return _save_model(BertForMaskedLM if mlm else BertModel, config, BertTokenizerFast, Path(path), seed)


DISTILBERT_HEADS: dict[str, type[PreTrainedModel]] = {
    "sequence-classification": DistilBertForSequenceClassification,
    "token-classification": DistilBertForTokenClassification,
    "question-answering": DistilBertForQuestionAnswering,
    "base": DistilBertModel,
    "masked-lm": DistilBertForMaskedLM,
}


def save_tiny_distilbert(
    path: Path,
    *,
    head: str = "sequence-classification",
    labels: list[str] | None = None,
    n_layers: int = 2,
    dim: int = 32,
    heads: int = 2,
    hidden_dim: int = 64,
    max_positions: int = 64,
    seed: int = 0,
) -> Path:
    """Save a random DistilBERT with the given head (see ``DISTILBERT_HEADS``) and its tokenizer.

    ``labels`` become ``id2label``/``label2id`` in the config, as a fine-tuned
    checkpoint would carry them. The tokenizer's ``model_max_length`` equals
    ``max_positions`` so truncation in tests behaves as with a real model.
    """
    if head not in DISTILBERT_HEADS:
        raise ValueError(f"unknown head '{head}'; choose one of: {', '.join(DISTILBERT_HEADS)}")
    label_fields = {}
    if labels is not None:
        label_fields = {
            "id2label": dict(enumerate(labels)),
            "label2id": {label: index for index, label in enumerate(labels)},
        }
    config = DistilBertConfig(
        vocab_size=len(tiny_vocab()),
        n_layers=n_layers,
        dim=dim,
        n_heads=heads,
        hidden_dim=hidden_dim,
        max_position_embeddings=max_positions,
        **label_fields,
    )
    return _save_model(DISTILBERT_HEADS[head], config, DistilBertTokenizerFast, Path(path), seed)


def _save_tokenizer(
    tokenizer_class: type[PreTrainedTokenizerFast], path: Path, model_max_length: int
) -> PreTrainedTokenizerFast:
    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    # transformers 5 ignores ``vocab_file=``; ``vocab`` takes the file path (or a dict).
    tokenizer = tokenizer_class(
        vocab=str(vocab_file),
        do_lower_case=True,
        model_max_length=model_max_length,
        # Recorded in tokenizer_config.json, so whoever loads it sees which inputs it emits.
        model_input_names=list(tokenizer_class.model_input_names),
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def _save_model(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    tokenizer_class: type[PreTrainedTokenizerFast],
    path: Path,
    seed: int,
) -> Path:
    """Build ``model_class`` with seeded random weights and save it with its tokenizer.

    The weights come from NumPy's legacy ``RandomState``, whose stream is frozen across
    NumPy versions and does not depend on torch, so a seed gives the same model on every
    machine and release: reference outputs recorded once (say, from an old transformers in
    a throwaway environment) stay valid. Every parameter is drawn, biases and LayerNorms
    included, because the default initialisation (zero biases, identity LayerNorms) hides
    wiring mistakes; matrices are scaled by 1/sqrt(fan-in) so logits stay decisive rather
    than near-uniform, which keeps argmax comparisons away from ties.
    """
    with torch.random.fork_rng(devices=[]):
        model = model_class(config)
    state = np.random.RandomState(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.from_numpy(_draw(state, name, tuple(parameter.shape))))
    with quiet_loading():
        model.save_pretrained(path)
    _save_tokenizer(tokenizer_class, path, config.max_position_embeddings)
    return path


def _draw(state: np.random.RandomState, name: str, shape: tuple[int, ...]) -> np.ndarray:
    noise = state.standard_normal(shape).astype(np.float32)
    if "norm" in name.lower() and name.endswith("weight"):
        return 1.0 + 0.1 * noise
    if len(shape) == 1:
        return 0.1 * noise
    if "embeddings" in name:
        return noise
    return noise / np.sqrt(shape[-1])
