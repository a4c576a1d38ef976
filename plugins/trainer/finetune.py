"""Fine-tuning any task from a DistilBERT (or converted BERT) checkpoint.

The loop runs under Hugging Face Accelerate, which owns device placement, mixed
precision and (when started with ``accelerate launch``) distribution, so one code path
serves a laptop CPU and a rack of GPUs. Around it: length-grouped batches, AdamW
(fused where torch offers it) with linear warmup and decay, an evaluation each
epoch through the same engine that serves predictions, the best checkpoint kept,
and every run and model recorded in the database.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from nlpkit import settings
from nlpkit.evaluation import evaluate
from nlpkit.modeling import (
    LoadedModel,
    get_backend,
    max_input_length,
    native_bf16,
    quiet_loading,
    resolve_model_path,
    write_metadata,
)
from nlpkit.pipelines import ModelRegistry
from nlpkit.plugins import get_task_class
from nlpkit.store import Database
from nlpkit.tasks import EncodedExample, Example, Task
from nlpkit_plugins.trainer.batching import collate, length_grouped_batches

log = logging.getLogger("nlpkit.trainer")


@dataclass
class FineTuneConfig:
    """Everything that defines a fine-tuning run; stored as the run's parameters."""

    task: str
    data: Path
    base_model: str
    name: str
    eval_data: Path | None = None
    output_dir: Path | None = None
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_examples: int | None = None
    max_length: int | None = None
    precision: str = "auto"
    seed: int = 42
    device: str = "auto"

    def params(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


@dataclass
class FineTuneResult:
    model_dir: Path
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    run_id: int


def fine_tune(config: FineTuneConfig, database: Database) -> FineTuneResult:
    """Train, evaluate each epoch, keep the best checkpoint, register it under ``config.name``."""
    task_class = get_task_class(config.task)
    train_examples = _sample(task_class.read_examples(config.data), config.max_examples, config.seed)
    eval_examples = task_class.read_examples(config.eval_data) if config.eval_data else []
    output_dir = config.output_dir or settings.models_dir() / config.name
    with database.recorded_run(
        kind="train", task=config.task, model_name=config.name, base_model=config.base_model, params=config.params()
    ) as run_id:
        return _Run(config, task_class, train_examples, eval_examples, output_dir, database, run_id).execute()


def _sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subset: several data files are sorted by label, so never a prefix."""
    if limit is None or limit >= len(examples):
        return examples
    return random.Random(seed).sample(examples, limit)


class _Run:
    """One fine-tuning run; split into steps so each reads on its own."""

    def __init__(
        self,
        config: FineTuneConfig,
        task_class: type[Task],
        train_examples: list[Example],
        eval_examples: list[Example],
        output_dir: Path,
        database: Database,
        run_id: int,
    ) -> None:
        self.config = config
        self.train_examples = train_examples
        self.eval_examples = eval_examples
        self.output_dir = output_dir
        self.database = database
        self.run_id = run_id
        set_seed(config.seed)
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and native_bf16(config.device))
        self.accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=config.device == "cpu")
        self.task = self._build_task(task_class, use_bf16)
        self.history: list[dict[str, Any]] = []

    def _build_task(self, task_class: type[Task], use_bf16: bool) -> Task:
        _name, base_path = resolve_model_path(self.config.base_model, ModelRegistry(self.database).path)
        labels = task_class.label_names(self.train_examples)
        head_config = dict(task_class.head_config)
        if labels:  # span extraction (QA) has no classes
            head_config |= {
                "num_labels": len(labels),
                "id2label": dict(enumerate(labels)),
                "label2id": {label: index for index, label in enumerate(labels)},
            }
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        head = getattr(transformers, task_class.model_class)
        with quiet_loading():  # a "newly initialized" head is the point of fine-tuning
            model = head.from_pretrained(base_path, ignore_mismatched_sizes=True, **head_config)
        loaded = LoadedModel(
            name=self.config.name,
            revision="training",
            path=base_path,
            model=model,
            tokenizer=tokenizer,
            max_length=max_input_length(model, tokenizer),
            backend=get_backend("bf16" if use_bf16 else "torch"),
            device=self.accelerator.device,
        )
        return task_class(loaded, **task_class.evaluation_options)

    def execute(self) -> FineTuneResult:
        config, accelerator = self.config, self.accelerator
        model = self.task.model.model
        max_length = config.max_length or self.task.model.max_length
        features = self.task.encode_examples(self.train_examples, max_length)
        # Encoding the evaluation set checks its labels against the model's before any training time is spent.
        self.task.encode_examples(self.eval_examples, max_length)
        steps_per_epoch = math.ceil(len(features) / config.batch_size / accelerator.num_processes)
        optimizer = torch.optim.AdamW(
            _parameter_groups(model, config.weight_decay), lr=config.learning_rate, **_fused_if_available(accelerator)
        )
        total_steps = steps_per_epoch * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        rng = random.Random(config.seed)
        best: dict[str, float] | None = None
        for epoch in range(1, config.epochs + 1):
            train_stats = self._train_epoch(model, optimizer, scheduler, features, rng, epoch)
            metrics = self._evaluate(model)
            self.history.append({"epoch": epoch, **train_stats, **metrics})
            self.database.record_run_metrics(self.run_id, self.history)
            if best is None or _headline(metrics) >= _headline(best):
                best = metrics
                self._save(accelerator.unwrap_model(model), metrics)
        assert best is not None  # epochs >= 1
        revision = write_metadata(self.output_dir)["revision"]
        self.database.register_model(
            name=config.name,
            task=config.task,
            path=self.output_dir,
            revision=revision,
            base_model=config.base_model,
            metrics=best,
            training_run_id=self.run_id,
        )
        return FineTuneResult(self.output_dir, best, self.history, self.run_id)

    def _train_epoch(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        features: Sequence[EncodedExample],
        rng: random.Random,
        epoch: int,
    ) -> dict[str, float]:
        accelerator, config = self.accelerator, self.config
        batches = length_grouped_batches([len(f.input_ids) for f in features], config.batch_size, rng)
        batches = batches[accelerator.process_index :: accelerator.num_processes]
        pad_id = self.task.model.tokenizer.pad_token_id or 0
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(
            batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not accelerator.is_local_main_process
        )
        for step, indices in enumerate(bar, start=1):
            batch = collate([features[i] for i in indices], pad_id, self.task.token_level_outputs)
            batch = {key: value.to(accelerator.device) for key, value in batch.items()}
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            seen += len(indices)
            bar.set_postfix(loss=f"{loss_sum / step:.4f}", ex_s=f"{seen / (time.perf_counter() - started):.0f}")
        elapsed = time.perf_counter() - started
        return {
            "train_loss": loss_sum / max(len(batches), 1),
            "train_examples_per_s": seen / elapsed,
            "train_seconds": elapsed,
        }

    def _evaluate(self, model: Any) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        model.eval()
        metrics = evaluate(self.task, self.eval_examples, show_progress=self.accelerator.is_local_main_process)
        model.train()
        log.info("evaluation: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _save(self, model: Any, metrics: dict[str, float]) -> None:
        """Write the checkpoint beside the old one, then swap, so a crash never leaves half a model."""
        if not self.accelerator.is_main_process:
            return
        staging = self.output_dir.with_name(self.output_dir.name + ".saving")
        shutil.rmtree(staging, ignore_errors=True)
        with quiet_loading():
            model.save_pretrained(staging)
        self.task.model.tokenizer.save_pretrained(staging)
        write_metadata(staging, task=self.config.task, base_model=self.config.base_model, metrics=metrics)
        shutil.rmtree(self.output_dir, ignore_errors=True)
        staging.rename(self.output_dir)


def _headline(metrics: dict[str, float]) -> float:
    """The first metric a task reports is the one that picks the best checkpoint."""
    return next(iter(metrics.values()), 0.0)


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights, as BERT was trained."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fused_if_available(accelerator: Accelerator) -> dict[str, bool]:
    """torch's fused AdamW runs the whole update in one kernel per step on CPU and CUDA."""
    return {"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}
