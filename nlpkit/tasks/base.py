"""What a task is: the contract between the engine, the trainer and a task plugin.

A task turns input records into :class:`Prediction` objects with a DistilBERT-style
model. It does the task-specific parts only: cutting a record into model-sized
windows of token ids, turning the model's outputs for those windows back into an
answer, reading training data and scoring predictions. The engine does batching,
padding, precision and device; the worker does Kafka and the database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from nlpkit.errors import InvalidRecordError, NlpkitError


class TaskModel(Protocol):
    """What a task reads from the model it is given: ``nlpkit.inference.LoadedModel`` is one.

    A protocol rather than that class, so the task contract stays below everything that
    loads and runs models (nothing here imports torch or a backend).
    """

    name: str
    tokenizer: Any  # a transformers fast tokenizer
    max_length: int  # the most tokens one window may hold, special tokens included
    config: dict[str, Any]  # the model's config.json
    metadata: dict[str, Any]  # the model directory's nlpkit.json (thresholds and the like)
    device: str

    @property
    def id2label(self) -> dict[int, str]: ...


@dataclass(frozen=True)
class TaskOption:
    """A setting of a task, offered as a flag by ``nlpkit predict TASK`` (``doc_stride`` becomes
    ``--doc-stride``) and as a keyword argument in Python. ``None`` as the default means the
    task works the value out from the model."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """``value`` converted to the option's type (from text, when it comes from a flag or -o)."""
        if value is None:
            return self.default
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                converted: Any = value.lower() in ("1", "true", "yes")
            else:
                converted = self.type(value)
        except (TypeError, ValueError) as exc:
            raise NlpkitError(f"{self.flag} expects a {self.type.__name__}, got {value!r}") from exc
        if self.choices and converted not in self.choices:
            raise NlpkitError(f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}")
        return converted


@dataclass(frozen=True)
class Record:
    """One input: the task's fields (``{"text": ...}``) and an optional caller-given id."""

    fields: Mapping[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Window:
    """One model input cut from a record.

    ``input_ids`` already include special tokens. ``context`` is whatever the task
    needs later to map outputs back onto the record (character offsets, say); the
    engine never looks inside it.
    """

    input_ids: Sequence[int]
    context: Any = None


@dataclass(frozen=True)
class Prediction:
    """A task's answer for one record.

    ``label`` and ``score`` are the headline (stored in indexed columns so results can
    be queried by label); ``output`` is the complete JSON-serialisable answer, exactly
    what ``nlpkit predict`` prints and what the database stores.
    """

    label: str | None
    score: float | None
    output: dict[str, Any]


@dataclass(frozen=True)
class Example:
    """A labelled record for training and evaluation; ``target`` is task-specific."""

    record: Record
    target: Any
    source: str = ""  # "file:line", so data errors and evaluation reports can point at it


@dataclass
class EncodedExample:
    """Training features for one example: token ids plus the task's label tensors."""

    input_ids: list[int]
    labels: Any
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """Base class for tasks. Subclass it in a plugin and register it with ``register_tasks``.

    Class attributes a subclass sets:

    - ``name``: what users type, ``nlpkit predict NAME``.
    - ``description``: one line for listings.
    - ``input_fields``: the record fields the task reads (each a non-empty string).
    - ``model_class``: the name of the transformers ``AutoModelFor...`` class that builds
      its head (a name, so listing plugins does not import torch).
    - ``token_level_outputs``: True when model outputs have one row per token; the
      engine then trims them to each window's real length before ``postprocess``.
    - ``output_keys``: which model outputs ``postprocess`` needs.
    - ``options``: :class:`TaskOption` settings; their values are in ``self.settings``.
    - ``head_config``: config fields for a new head (e.g. the multi-label problem type).
    - ``evaluation_options``: settings used when scoring against gold data, unless the
      user chose otherwise.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    input_fields: ClassVar[tuple[str, ...]] = ("text",)
    model_class: ClassVar[str]
    token_level_outputs: ClassVar[bool] = False
    output_keys: ClassVar[tuple[str, ...]] = ("logits",)
    options: ClassVar[tuple[TaskOption, ...]] = ()
    head_config: ClassVar[dict[str, Any]] = {}
    evaluation_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: TaskModel, **options: Any) -> None:
        known = {option.name: option for option in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            offered = ", ".join(known) or "none"
            raise NlpkitError(f"task '{self.name}' has no option {unknown[0]!r} (its options: {offered})")
        self.model = model
        self.settings = {name: option.parse(options.get(name)) for name, option in known.items()}

    @classmethod
    def validate(cls, fields: Mapping[str, Any]) -> dict[str, str]:
        """Check a decoded message or input line; return just the fields the task reads.

        Raises :class:`InvalidRecordError` with a reason fit for a dead letter.
        """
        cleaned = {}
        for name in cls.input_fields:
            value = fields.get(name)
            if value is None:
                raise InvalidRecordError(f"missing field '{name}'")
            if not isinstance(value, str):
                raise InvalidRecordError(f"field '{name}' must be a string, not {type(value).__name__}")
            if not value.strip():
                raise InvalidRecordError(f"field '{name}' is empty")
            cleaned[name] = value
        return cleaned

    @abstractmethod
    def windows(self, records: Sequence[Record]) -> list[list[Window]]:
        """Cut each record into one or more windows of token ids (one list per record).

        Called with a whole batch at once, never an empty one, so tokenization can run in
        the fast tokenizer's parallel batch mode.
        """

    @abstractmethod
    def postprocess(
        self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]
    ) -> Prediction:
        """Turn the model outputs for one record's windows (float32 arrays) into a Prediction."""

    # --- training and evaluation -------------------------------------------------

    @classmethod
    def read_examples(cls, path: Path) -> list[Example]:
        """Read labelled examples from a data file; raise DataFormatError naming file and line."""
        raise NotImplementedError(f"task '{cls.name}' cannot read training data")

    @classmethod
    def label_names(cls, examples: Sequence[Example]) -> list[str]:
        """The label set a new model head is built with, derived from training examples."""
        raise NotImplementedError(f"task '{cls.name}' does not define labels")

    def encode_examples(self, examples: Sequence[Example], max_length: int) -> list[EncodedExample]:
        """Tokenize labelled examples into training features for this task's head, at most
        ``max_length`` tokens each (training often uses a shorter limit than inference); never
        called with none (transformers' tokenizers refuse an empty batch)."""
        raise NotImplementedError(f"task '{self.name}' cannot be trained")

    @classmethod
    def score(cls, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """Metrics of predictions against the examples' targets; the first key is the headline."""
        raise NotImplementedError(f"task '{cls.name}' has no metrics")
