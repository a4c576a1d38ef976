"""Distillation: smaller students taught by larger teachers, DistilBERT's way.

- General: on unlabelled text, a masked-LM student learns from a masked-LM teacher with
  the triple loss (see :mod:`nlpkit_plugins.trainer.losses`). If the teacher has no
  masked-LM head (a sentence encoder such as the starter backbone), one is fitted first
  with the encoder frozen, so its soft targets mean something.
- Task-specific: a fine-tuned teacher's soft targets plus the gold labels teach a
  student for the same task. The teacher runs once, before training (see
  :mod:`nlpkit_plugins.trainer.teacher_targets`), not in every epoch.

Students start as copies of the teacher keeping the chosen layers (``--student-layers
0,2,4``), or from another checkpoint (``--student``) that shares the teacher's
vocabulary and width. Runs and students are recorded in the database like fine-tuning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DistilBertForMaskedLM

from nlpkit import settings
from nlpkit.errors import DataFormatError, NlpkitError
from nlpkit.evaluation import evaluate
from nlpkit.inference.backends import get_backend
from nlpkit.inference.loading import LoadedModel
from nlpkit.models.cls_only import first_token_only_where_possible
from nlpkit.models.files import quiet_loading, resolve_model_path, write_metadata
from nlpkit.pipelines import ModelRegistry
from nlpkit.plugins import get_task_class
from nlpkit.store import Database
from nlpkit.tasks.base import Task
from nlpkit.tasks.readers import seeded_sample
from nlpkit_plugins.trainer.batching import pad
from nlpkit_plugins.trainer.finetune import FineTuneResult, save_model
from nlpkit_plugins.trainer.loop import LoopConfig, TrainingLoop, training_accelerator
from nlpkit_plugins.trainer.losses import (
    TaskDistillationWeights,
    TripleLossWeights,
    last_hidden_cosine,
    task_soft_target_loss,
    triple_loss,
)
from nlpkit_plugins.trainer.masking import Masker, token_counts
from nlpkit_plugins.trainer.students import check_compatible, student_from_teacher
from nlpkit_plugins.trainer.teacher_targets import collate_taught, split_batch, teach

GENERAL_TASK = "masked-lm"  # what the models table calls a general-purpose student
HELD_OUT = 500  # sequences kept aside to score a general distillation


@dataclass(kw_only=True)
class DistillConfig(LoopConfig):
    teacher: str
    data: Path
    name: str
    task: str | None = None  # None: general distillation on unlabelled text
    student: str | None = None
    student_layers: list[int] | None = None
    eval_data: Path | None = None
    output_dir: Path | None = None
    max_examples: int | None = None
    max_length: int | None = None
    alpha_ce: float | None = None  # None: 5.0 for general, 0.5 for task-specific distillation
    alpha_mlm: float = 2.0
    alpha_cos: float | None = None  # None: 1.0 for general, 0.0 for task-specific distillation
    alpha_task: float = 0.5
    temperature: float = 2.0
    head_steps: int = 300  # fitting a masked-LM head for a teacher that has none
    precision: str = "auto"
    device: str = "auto"
    resume: bool = False

    def params(self) -> dict[str, Any]:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v for f in fields(self)}

    def loop(self) -> LoopConfig:
        return LoopConfig(**{f.name: getattr(self, f.name) for f in fields(LoopConfig)})


def distill(config: DistillConfig, database: Database) -> FineTuneResult:
    """Run a general or task-specific distillation and register the student."""
    if (config.student is None) == (config.student_layers is None):
        raise NlpkitError("give either --student-layers (a copy of the teacher) or --student REF, not both or neither")
    set_seed(config.seed)
    accelerator, use_bf16 = training_accelerator(config.precision, config.device)
    run = _GeneralRun if config.task is None else _TaskRun
    job = run(config, database, accelerator, use_bf16)
    if not accelerator.is_main_process:
        return job.execute(None)
    with database.runs.recorded(
        kind="distill", task=job.task_name, model_name=config.name, base_model=config.teacher, params=config.params()
    ) as run_id:
        return job.execute(run_id)


class _Run:
    """What both kinds share: loading models by reference, the loop, saving and registering."""

    task_name: str

    def __init__(self, config: DistillConfig, database: Database, accelerator: Accelerator, use_bf16: bool) -> None:
        self.config = config
        self.database = database
        self.accelerator = accelerator
        self.backend = get_backend("bf16" if use_bf16 else "torch")
        self.output_dir = config.output_dir or settings.models_dir() / config.name
        self.lookup = ModelRegistry(database).path

    def path(self, ref: str) -> Path:
        return resolve_model_path(ref, self.lookup)[1]

    def loaded(self, model: Any, tokenizer: Any, path: Path) -> LoadedModel:
        return LoadedModel.from_torch(self.config.name, path, model, tokenizer, self.backend, self.accelerator.device)

    def train(
        self,
        student: LoadedModel,
        features: list[Any],
        lengths: list[int],
        *,
        collate_fn: Any,
        loss: Any,
        evaluate_fn: Any,
        run_id: int | None,
        metadata: dict[str, Any],
        lower_is_better: bool,
    ) -> FineTuneResult:
        loop_config = self.config.loop()
        loop_config.lower_is_better = lower_is_better
        record = (lambda history: self.database.runs.record_metrics(run_id, history)) if run_id else lambda h: None
        loop = TrainingLoop(
            self.accelerator,
            student.model,
            features,
            lengths,
            loop_config,
            collate=collate_fn,
            loss=loss,
            evaluate=evaluate_fn,
            save_best=lambda metrics: save_model(student, self.output_dir, metrics=metrics, **metadata),
            state_dir=self.output_dir.with_name(self.output_dir.name + ".state"),
            record=record,
        )
        result = loop.run(resume=self.config.resume)
        if run_id is not None:
            self.database.models.register(
                name=self.config.name,
                task=self.task_name,
                path=self.output_dir,
                revision=write_metadata(self.output_dir)["revision"],
                base_model=self.config.teacher,
                metrics=result.best,
                training_run_id=run_id,
            )
        return FineTuneResult(self.output_dir, result.best or {}, result.history, run_id)


class _GeneralRun(_Run):
    task_name = GENERAL_TASK

    def execute(self, run_id: int | None) -> FineTuneResult:
        config = self.config
        teacher_path = self.path(config.teacher)
        tokenizer = AutoTokenizer.from_pretrained(teacher_path)
        max_length = config.max_length or 128
        sequences = seeded_sample(_read_sequences(config.data, tokenizer, max_length), config.max_examples, config.seed)
        if len(sequences) <= HELD_OUT:
            raise DataFormatError(
                f"{config.data}: {len(sequences)} sequences; general distillation needs more than "
                f"{HELD_OUT} (that many are held out to score it)"
            )
        held_out, sequences = sequences[:HELD_OUT], sequences[HELD_OUT:]
        masker = Masker(
            token_counts(sequences, tokenizer.vocab_size),
            tokenizer.all_special_ids,
            tokenizer.mask_token_id,
            seed=config.seed,
        )
        teacher = self._teacher(teacher_path, sequences, masker, tokenizer.pad_token_id or 0)
        student = self._student(teacher, tokenizer)
        weights = TripleLossWeights(
            config.alpha_ce if config.alpha_ce is not None else 5.0,
            config.alpha_mlm,
            config.alpha_cos if config.alpha_cos is not None else 1.0,
            config.temperature,
        )
        pad_id = tokenizer.pad_token_id or 0

        def collate_masked(batch: list[list[int]]) -> dict[str, torch.Tensor]:
            input_ids, attention_mask = pad(batch, pad_id)
            masked, labels = masker(input_ids, attention_mask)
            return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}

        def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._triple(model, teacher, batch, weights)[0]

        eval_batches = [collate_masked(held_out[i : i + 32]) for i in range(0, len(held_out), 32)]
        return self.train(
            self.loaded(student, tokenizer, teacher_path),
            sequences,
            [len(s) for s in sequences],
            collate_fn=collate_masked,
            loss=loss,
            evaluate_fn=lambda: self._score(student, teacher, eval_batches, weights),
            run_id=run_id,
            metadata={"task": GENERAL_TASK, "distilled_from": config.teacher},
            lower_is_better=True,
        )

    def _teacher(self, path: Path, sequences: list[list[int]], masker: Masker, pad_id: int) -> DistilBertForMaskedLM:
        with quiet_loading():
            teacher, info = DistilBertForMaskedLM.from_pretrained(path, output_loading_info=True)
        teacher.to(self.accelerator.device)
        if any(key.startswith(("vocab_transform", "vocab_layer_norm")) for key in info["missing_keys"]):
            _fit_head(teacher, sequences, masker, pad_id, self.config.head_steps, self.accelerator)
        return teacher.eval().requires_grad_(False)

    def _student(self, teacher: DistilBertForMaskedLM, tokenizer: Any) -> DistilBertForMaskedLM:
        if self.config.student_layers is not None:
            return student_from_teacher(teacher, self.config.student_layers).requires_grad_(True).train()
        student_path = self.path(self.config.student)
        with quiet_loading():
            student = DistilBertForMaskedLM.from_pretrained(student_path)
        check_compatible(teacher, student)
        _check_same_vocabulary(tokenizer, AutoTokenizer.from_pretrained(student_path))
        return student

    def _triple(self, student: Any, teacher: Any, batch: dict[str, torch.Tensor], weights: TripleLossWeights):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            taught = teacher(**inputs, output_hidden_states=True)
        learned = student(**inputs, output_hidden_states=True)
        return triple_loss(
            learned.logits,
            learned.hidden_states[-1],
            taught.logits,
            taught.hidden_states[-1],
            batch["labels"],
            batch["attention_mask"],
            weights,
        )

    def _score(
        self, student: Any, teacher: Any, batches: list[dict[str, torch.Tensor]], weights: TripleLossWeights
    ) -> dict[str, float]:
        """Held-out triple loss (the headline, lower is better) and its terms."""
        totals: dict[str, float] = {}
        with torch.no_grad():
            for batch in batches:
                batch = {key: value.to(self.accelerator.device) for key, value in batch.items()}
                total, parts = self._triple(student, teacher, batch, weights)
                for name, value in {"eval_loss": float(total), **{f"eval_{k}": v for k, v in parts.items()}}.items():
                    totals[name] = totals.get(name, 0.0) + value / len(batches)
        return totals


class _TaskRun(_Run):
    def __init__(self, config: DistillConfig, database: Database, accelerator: Accelerator, use_bf16: bool) -> None:
        super().__init__(config, database, accelerator, use_bf16)
        self.task_class = get_task_class(config.task)
        self.task_name = config.task

    def execute(self, run_id: int | None) -> FineTuneResult:
        config, task_class = self.config, self.task_class
        teacher_path = self.path(config.teacher)
        head = getattr(transformers, task_class.model_class)
        tokenizer = AutoTokenizer.from_pretrained(teacher_path)
        with quiet_loading():
            teacher = head.from_pretrained(teacher_path).to(self.accelerator.device).eval().requires_grad_(False)
        student = self._student(teacher, tokenizer, head)
        first_token_only_where_possible(teacher)  # after the copy: the soft targets read [CLS] only, too
        student_task = task_class(self.loaded(student, tokenizer, teacher_path), **task_class.evaluation_options)
        examples = seeded_sample(task_class.read_examples(config.data), config.max_examples, config.seed)
        eval_examples = task_class.read_examples(config.eval_data) if config.eval_data else []
        max_length = config.max_length or student_task.model.max_length
        features = student_task.encode_examples(examples, max_length)
        if eval_examples:  # encoding it checks its labels before any training time is spent
            student_task.encode_examples(eval_examples, max_length)
        weights = TaskDistillationWeights(
            config.alpha_ce if config.alpha_ce is not None else 0.5,
            config.alpha_task,
            config.alpha_cos or 0.0,
            config.temperature,
        )
        kind = soft_target_kind(task_class)
        pad_id = tokenizer.pad_token_id or 0
        token_level = task_class.token_level_outputs
        taught_features = teach(
            teacher, features, task_class.output_keys, token_level=token_level, pad_id=pad_id,
            device=self.accelerator.device, hidden=bool(weights.cos),
        )  # fmt: skip
        del teacher  # its outputs are all the loop needs

        def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs, taught = split_batch(batch)
            learned = model(**inputs, output_hidden_states=bool(weights.cos))
            soft = task_soft_target_loss(kind, learned, taught, inputs, weights.temperature)
            total = weights.ce * soft + weights.task * learned.loss
            if weights.cos:
                total = total + weights.cos * last_hidden_cosine(learned, taught, inputs, token_level)
            return total

        return self.train(
            student_task.model,
            taught_features,
            [len(f.input_ids) for f in features],
            collate_fn=lambda batch: collate_taught(batch, pad_id, token_level),
            loss=loss,
            evaluate_fn=lambda: evaluate(student_task, eval_examples) if eval_examples else {},
            run_id=run_id,
            metadata={"task": config.task, "distilled_from": config.teacher},
            lower_is_better=False,
        )

    def _student(self, teacher: Any, tokenizer: Any, head: Any) -> Any:
        if self.config.student_layers is not None:
            return student_from_teacher(teacher, self.config.student_layers).requires_grad_(True).train()
        student_path = self.path(self.config.student)
        extra = dict(self.task_class.head_config)
        if self.task_class.output_keys == ("logits",):  # the student's classes are the teacher's
            extra |= {"id2label": teacher.config.id2label, "label2id": teacher.config.label2id}
        with quiet_loading():
            student = head.from_pretrained(student_path, ignore_mismatched_sizes=True, **extra)
        check_compatible(teacher, student)
        _check_same_vocabulary(tokenizer, AutoTokenizer.from_pretrained(student_path))
        return student


def soft_target_kind(task_class: type[Task]) -> str:
    """How a task's head turns logits into probabilities, for its soft targets."""
    if task_class.output_keys == ("start_logits", "end_logits"):
        return "span"
    if task_class.token_level_outputs:
        return "token"
    if task_class.head_config.get("problem_type") == "multi_label_classification":
        return "multi"
    return "single"


def _read_sequences(path: Path, tokenizer: Any, max_length: int) -> list[list[int]]:
    """Unlabelled text, one document per line, cut into windows of ``max_length`` tokens."""
    if not Path(path).is_file():
        raise DataFormatError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    if not lines:
        raise DataFormatError(f"{path}: no text")
    sequences = []
    for start in tqdm(range(0, len(lines), 1000), desc="tokenizing", unit="k lines", leave=False):
        encoded = tokenizer(
            lines[start : start + 1000],
            truncation=True,
            max_length=max_length,
            return_overflowing_tokens=True,
            return_attention_mask=False,
        )
        sequences.extend(ids for ids in encoded["input_ids"] if len(ids) > 4)
    return sequences


def _fit_head(
    teacher: DistilBertForMaskedLM,
    sequences: list[list[int]],
    masker: Masker,
    pad_id: int,
    steps: int,
    accelerator: Accelerator,
) -> None:
    """Fit a missing masked-LM head (transform, norm, output bias; the output matrix is tied to
    the word embeddings) with the encoder frozen, so the teacher's soft targets are informed."""
    teacher.requires_grad_(False)
    head = [teacher.vocab_transform, teacher.vocab_layer_norm]
    parameters = [p for module in head for p in module.parameters()] + [teacher.vocab_projector.bias]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    rng = random.Random(0)
    teacher.train()
    for _ in tqdm(range(steps), desc="fitting the teacher's masked-LM head", leave=False):
        input_ids, attention_mask = pad(rng.sample(sequences, min(32, len(sequences))), pad_id)
        masked, labels = masker(input_ids, attention_mask)
        loss = teacher(
            input_ids=masked.to(accelerator.device),
            attention_mask=attention_mask.to(accelerator.device),
            labels=labels.to(accelerator.device),
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise NlpkitError("teacher and student must share the vocabulary: their tokenizers map tokens to different ids")
