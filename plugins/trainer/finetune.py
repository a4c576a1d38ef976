"""Fine-tuning any task from a DistilBERT (or converted BERT) checkpoint.

The task provides the data reader, the head, the training features and the metrics;
the shared :class:`~nlpkit_plugins.trainer.loop.TrainingLoop` does the optimisation,
evaluates through the same engine that serves predictions, keeps the best checkpoint
and can resume. The run and the model it produces are recorded in the database (by the
main process only, when several run under ``accelerate launch``).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from nlpkit import settings
from nlpkit.errors import NlpkitError
from nlpkit.evaluation import evaluate
from nlpkit.inference.backends import get_backend
from nlpkit.inference.loading import LoadedModel
from nlpkit.models.files import quiet_loading, resolve_model_path, write_metadata
from nlpkit.pipelines import ModelRegistry
from nlpkit.plugins import get_task_class
from nlpkit.store import Database
from nlpkit.tasks.base import Example, Task
from nlpkit.tasks.readers import seeded_sample
from nlpkit_plugins.trainer.batching import collate
from nlpkit_plugins.trainer.loop import LoopConfig, TrainingLoop, training_accelerator


@dataclass(kw_only=True)
class FineTuneConfig(LoopConfig):
    """Everything that defines a fine-tuning run; stored as the run's parameters."""

    task: str
    data: Path
    base_model: str
    name: str
    eval_data: Path | None = None
    output_dir: Path | None = None
    max_examples: int | None = None
    max_length: int | None = None
    freeze_layers: int = 0  # keep the embeddings and this many lowest transformer layers as they were
    precision: str = "auto"  # auto: bf16 where the hardware has it natively
    device: str = "auto"
    resume: bool = False

    def params(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}

    def loop(self) -> LoopConfig:
        return LoopConfig(**{f.name: getattr(self, f.name) for f in fields(LoopConfig)})


@dataclass
class FineTuneResult:
    model_dir: Path
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    run_id: int | None


def fine_tune(config: FineTuneConfig, database: Database) -> FineTuneResult:
    """Train, evaluate, keep the best checkpoint and register it under ``config.name``."""
    set_seed(config.seed)
    accelerator, use_bf16 = training_accelerator(config.precision, config.device)
    task_class = get_task_class(config.task)
    train_examples = seeded_sample(task_class.read_examples(config.data), config.max_examples, config.seed)
    eval_examples = task_class.read_examples(config.eval_data) if config.eval_data else []
    output_dir = config.output_dir or settings.models_dir() / config.name
    task = _task_with_new_head(config, task_class, train_examples, database, accelerator, use_bf16)
    if not accelerator.is_main_process:  # the main process alone writes to the database
        return _train(config, task, train_examples, eval_examples, output_dir, accelerator, None, None)
    with database.runs.recorded(
        kind="train", task=config.task, model_name=config.name, base_model=config.base_model, params=config.params()
    ) as run_id:
        return _train(config, task, train_examples, eval_examples, output_dir, accelerator, database, run_id)


def _task_with_new_head(
    config: FineTuneConfig,
    task_class: type[Task],
    examples: list[Example],
    database: Database,
    accelerator: Accelerator,
    use_bf16: bool,
) -> Task:
    _name, base_path = resolve_model_path(config.base_model, ModelRegistry(database).path)
    labels = task_class.label_names(examples)
    head_config = dict(task_class.head_config)
    if labels:  # span extraction (QA) has no classes
        head_config |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: index for index, label in enumerate(labels)},
        }
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    with quiet_loading():  # a "newly initialized" head is the point of fine-tuning
        model = getattr(transformers, task_class.model_class).from_pretrained(
            base_path, ignore_mismatched_sizes=True, **head_config
        )
    freeze_lower_layers(model, config.freeze_layers)
    backend = get_backend("bf16" if use_bf16 else "torch")
    loaded = LoadedModel.from_torch(config.name, base_path, model, tokenizer, backend, accelerator.device)
    return task_class(loaded, **task_class.evaluation_options)


def freeze_lower_layers(model: torch.nn.Module, count: int) -> None:
    """Keep the embeddings and the lowest ``count`` transformer layers at their starting weights.

    On a few thousand examples the lower layers, which hold what the backbone learned about
    language in general, change little when trained and cost most of the backward pass: with 3
    of a 6-layer model's layers frozen, a step on CPU takes about 60% of the time (with 4, about 80%
    of that), and models from the demo's few thousand IMDb reviews judged the streamed reviews at least
    as well (scripts/demo.py). The optimizer holds only the parameters still trained.
    """
    if count == 0:
        return
    encoder = model.base_model
    if not hasattr(encoder, "transformer"):
        raise NlpkitError(f"--freeze-layers needs a DistilBERT model, not {type(encoder).__name__}")
    layers = encoder.transformer.layer
    if count > len(layers):
        raise NlpkitError(f"--freeze-layers {count}: the model has {len(layers)} transformer layers")
    for module in (encoder.embeddings, *layers[:count]):
        module.requires_grad_(False)


def _train(
    config: FineTuneConfig,
    task: Task,
    train_examples: list[Example],
    eval_examples: list[Example],
    output_dir: Path,
    accelerator: Accelerator,
    database: Database | None,
    run_id: int | None,
) -> FineTuneResult:
    max_length = config.max_length or task.model.max_length
    features = task.encode_examples(train_examples, max_length)
    if eval_examples:  # encoding it checks its labels against the model's before any training time is spent
        task.encode_examples(eval_examples, max_length)
    pad_id = task.model.tokenizer.pad_token_id or 0

    def save_best(metrics: dict[str, float]) -> None:
        save_model(task.model, output_dir, task=config.task, base_model=config.base_model, metrics=metrics)

    loop = TrainingLoop(
        accelerator,
        task.model.model,
        features,
        [len(feature.input_ids) for feature in features],
        config.loop(),
        collate=lambda batch: collate(batch, pad_id, task.token_level_outputs),
        loss=lambda model, batch: model(**batch).loss,
        evaluate=lambda: evaluate(task, eval_examples) if eval_examples else {},
        save_best=save_best,
        state_dir=output_dir.with_name(output_dir.name + ".state"),
        record=(lambda history: database.runs.record_metrics(run_id, history)) if database else lambda history: None,
    )
    result = loop.run(resume=config.resume)
    if database is not None and run_id is not None:
        database.models.register(
            name=config.name,
            task=config.task,
            path=output_dir,
            revision=write_metadata(output_dir)["revision"],
            base_model=config.base_model,
            metrics=result.best,
            training_run_id=run_id,
        )
    return FineTuneResult(output_dir, result.best or {}, result.history, run_id)


def save_model(loaded: LoadedModel, output_dir: Path, **metadata: Any) -> None:
    """Write the model beside the old one, then swap, so a crash never leaves half a model."""
    staging = output_dir.with_name(output_dir.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    with quiet_loading():
        loaded.model.save_pretrained(staging)
    loaded.tokenizer.save_pretrained(staging)
    write_metadata(staging, **metadata)
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
