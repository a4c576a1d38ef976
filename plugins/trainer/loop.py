"""The training loop shared by fine-tuning and distillation.

Hugging Face Accelerate owns devices, mixed precision and distribution: the same loop
runs on one CPU, one GPU, or several processes started by ``accelerate launch`` (each
process takes its share of every epoch's batches; gradients are averaged by
Accelerate's DistributedDataParallel). Around it the loop adds what a long run needs:
length-grouped batches, gradient accumulation, AdamW with linear warmup and decay,
gradient clipping, evaluation every epoch or every N steps, the best checkpoint kept,
early stopping, and a resumable state saved at every evaluation.

What is trained and how it is scored are the caller's: a loss function over a batch,
an evaluation function and a function that saves the best model.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from nlpkit.errors import NlpkitError
from nlpkit.inference.loading import native_bf16, pick_device
from nlpkit_plugins.trainer.batching import length_grouped_batches

STATE_FILE = "progress.json"


def training_accelerator(precision: str, device: str) -> tuple[Accelerator, bool]:
    """The Accelerator for one training run, and whether it computes in bf16.

    ``precision`` "auto" means bf16 where the device has bf16 units. Accelerate keeps one
    mixed-precision setting per process and refuses a second Accelerator that asks for another,
    so a process that trains twice (a notebook, a test suite, a script calling ``fine_tune`` in
    fp32 and then, on a CPU with bf16 units, in "auto") would fail on its second run. The
    earlier run's setting is dropped first; the process group (``accelerate launch``) is kept.
    ``cpu=True`` on a CPU-only machine makes the processes of ``accelerate launch`` join one
    gloo process group; without it each would train alone.
    """
    use_bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    mixed_precision = "bf16" if use_bf16 else "no"
    earlier = AcceleratorState._shared_state  # Accelerate's per-process singleton; no public way to ask
    if earlier and earlier.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=pick_device(device).type == "cpu"), use_bf16


@dataclass
class LoopConfig:
    """Optimisation and schedule settings (the run records them with its parameters)."""

    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    eval_steps: int | None = None  # evaluate every N optimizer steps; None: after every epoch
    metric: str | None = None  # picks the best checkpoint; None: the first metric evaluation returns
    lower_is_better: bool = False
    patience: int | None = None  # evaluations without improvement before stopping
    seed: int = 42


@dataclass
class Progress:
    """Where a run is; saved with the optimizer state so an interrupted run can resume."""

    epoch: int = 0  # the epoch being trained
    batch: int = 0  # micro-batches of that epoch already done by this process
    step: int = 0  # optimizer steps so far
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] | None = None
    stale: int = 0  # evaluations since the best one
    checkpointed_at: int = -1  # the optimizer step of the last evaluation, on every process


@dataclass
class LoopResult:
    best: dict[str, float] | None
    history: list[dict[str, Any]]
    stopped_early: bool


Loss = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


class TrainingLoop:
    """Trains ``model`` on ``features`` with ``loss``; ``evaluate`` and ``save_best`` run on the
    main process only, ``record`` receives the history after every evaluation."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        features: Sequence[Any],
        lengths: Sequence[int],
        config: LoopConfig,
        *,
        collate: Callable[[list[Any]], dict[str, torch.Tensor]],
        loss: Loss,
        evaluate: Callable[[], dict[str, float]],
        save_best: Callable[[dict[str, float]], None],
        state_dir: Path,
        record: Callable[[list[dict[str, Any]]], None] = lambda history: None,
    ) -> None:
        if config.grad_accum < 1 or config.batch_size < 1 or config.epochs < 1:
            raise NlpkitError("epochs, batch size and gradient accumulation must be at least 1")
        if not features:
            raise NlpkitError("no training examples")
        self.accelerator = accelerator
        self.model = model
        self.features = features
        self.lengths = lengths
        self.config = config
        self.collate = collate
        self.loss = loss
        self.evaluate = evaluate
        self.save_best = save_best
        self.state_dir = state_dir
        self.record = record
        self.progress = Progress()

    # --- setup ----------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> LoopResult:
        config, accelerator = self.config, self.accelerator
        optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, config.weight_decay),
            lr=config.learning_rate,
            betas=config.adam_betas,
            eps=config.adam_eps,
            **({"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}),
        )
        total_steps = self._steps_per_epoch() * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
        model, optimizer = accelerator.prepare(self.model, optimizer)
        # Not prepared: Accelerate's scheduler wrapper steps once per process, which assumes a
        # prepared dataloader's shorter epochs. Here steps are already counted per process.
        accelerator.register_for_checkpointing(scheduler)
        if resume:
            self._load_state()
        stopped = self._train(model, optimizer, scheduler)
        if accelerator.is_main_process:
            shutil.rmtree(self.state_dir, ignore_errors=True)  # finished: nothing left to resume
        return LoopResult(self.progress.best, self.progress.history, stopped)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's share of an epoch, the same on every rerun (seeded by seed and epoch).

        Every process gets the same number of batches, padded from the start of the epoch,
        so no process waits for a gradient exchange the others never start.
        """
        batches = length_grouped_batches(
            self.lengths, self.config.batch_size, random.Random(self.config.seed * 1_000_003 + epoch)
        )
        processes = self.accelerator.num_processes
        batches += batches[: -len(batches) % processes]
        return batches[self.accelerator.process_index :: processes]

    def _steps_per_epoch(self) -> int:
        return math.ceil(len(self._epoch_batches(0)) / self.config.grad_accum)

    # --- training -------------------------------------------------------------------------------

    def _train(self, model: Any, optimizer: Any, scheduler: Any) -> bool:
        config, accelerator, progress = self.config, self.accelerator, self.progress
        while progress.epoch < config.epochs:
            batches = self._epoch_batches(progress.epoch)
            model.train()
            started, seen, loss_sum, counted = time.perf_counter(), 0, 0.0, 0
            bar = tqdm(
                total=len(batches), initial=progress.batch, unit="batch",
                desc=f"epoch {progress.epoch + 1}/{config.epochs}", disable=not accelerator.is_local_main_process,
            )  # fmt: skip
            while progress.batch < len(batches):
                indices = batches[progress.batch]
                progress.batch += 1
                steps = progress.batch % config.grad_accum == 0 or progress.batch == len(batches)
                loss_sum += self._backward(model, indices, steps)
                counted += 1
                seen += len(indices)
                if steps:
                    self._step(model, optimizer, scheduler)
                bar.update()
                bar.set_postfix(loss=f"{loss_sum / counted:.4f}", ex_s=f"{seen / (time.perf_counter() - started):.0f}")
                if steps and config.eval_steps and progress.step % config.eval_steps == 0:
                    stats = _train_stats(loss_sum, counted, seen, started, accelerator.num_processes)
                    if self._checkpoint(model, stats, epoch=progress.epoch + 1):
                        bar.close()
                        return True
            bar.close()
            stats = _train_stats(loss_sum, counted, seen, started, accelerator.num_processes)
            progress.epoch, progress.batch = progress.epoch + 1, 0
            evaluated_here = progress.checkpointed_at == progress.step
            end_of_run = progress.epoch == config.epochs
            if (not config.eval_steps or (end_of_run and not evaluated_here)) and self._checkpoint(
                model, stats, epoch=progress.epoch
            ):
                return True
        return False

    def _backward(self, model: Any, indices: list[int], steps: bool) -> float:
        batch = {k: v.to(self.accelerator.device) for k, v in self.collate([self.features[i] for i in indices]).items()}
        # Between optimizer steps, skip the gradient exchange between processes: it happens once per step.
        syncing = nullcontext() if steps else self.accelerator.no_sync(model)
        with syncing:
            loss = self.loss(model, batch)
            if not torch.isfinite(loss):
                raise NlpkitError(f"the loss became {loss.item()}; lower the learning rate or check the data")
            self.accelerator.backward(loss / self.config.grad_accum)
        return loss.item()

    def _step(self, model: Any, optimizer: Any, scheduler: Any) -> None:
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1

    # --- evaluation, best model, early stopping, resumable state ----------------------------------

    def _checkpoint(self, model: Any, train_stats: dict[str, float], epoch: int) -> bool:
        """Evaluate, keep the best, save resumable state; True when early stopping says stop."""
        accelerator, progress = self.accelerator, self.progress
        progress.checkpointed_at = progress.step
        if accelerator.is_main_process:
            model.eval()
            metrics = self.evaluate()
            model.train()
            progress.history.append({"epoch": epoch, "step": progress.step} | train_stats | metrics)
            if self._improved(metrics):
                progress.best, progress.stale = metrics, 0
                self.save_best(metrics)
            else:
                progress.stale += 1
            self.record(progress.history)
            # Above the progress bars, as it happens: an hour-long run should not keep its scores to the end.
            if metrics:
                _say(f"epoch {epoch}, step {progress.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if self.config.patience is not None and progress.stale >= self.config.patience:
                _say(f"no improvement in {progress.stale} evaluations: stopping early")
                accelerator.set_trigger()
        accelerator.wait_for_everyone()
        self._save_state()
        return accelerator.check_trigger()

    def _improved(self, metrics: dict[str, float]) -> bool:
        if not metrics:
            return True  # nothing to compare: the latest model is the one to keep
        name = self.config.metric or next(iter(metrics))
        if name not in metrics:
            raise NlpkitError(f"no metric '{name}' to choose the best model by; evaluation gives: {', '.join(metrics)}")
        if self.progress.best is None:
            return True
        new, old = metrics[name], self.progress.best[name]
        return new < old if self.config.lower_is_better else new > old

    def _save_state(self) -> None:
        self.accelerator.save_state(str(self.state_dir))
        if self.accelerator.is_main_process:
            (self.state_dir / STATE_FILE).write_text(json.dumps(asdict(self.progress)))

    def _load_state(self) -> None:
        state_file = self.state_dir / STATE_FILE
        if not state_file.is_file():
            raise NlpkitError(f"nothing to resume: no saved training state in {self.state_dir}")
        self.accelerator.load_state(str(self.state_dir))
        self.progress = Progress(**json.loads(state_file.read_text()))
        if self.accelerator.is_main_process:
            _say(f"resuming at epoch {self.progress.epoch + 1}, step {self.progress.step}")


def _say(message: str) -> None:
    """A line on stderr above the progress bars (where the user is already looking)."""
    tqdm.write(message, file=sys.stderr)


def _train_stats(loss_sum: float, counted: int, seen: int, started: float, processes: int) -> dict[str, float]:
    elapsed = time.perf_counter() - started
    return {
        "train_loss": loss_sum / max(counted, 1),
        "train_examples_per_s": seen * processes / max(elapsed, 1e-9),
        "train_seconds": elapsed,
    }


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights, as BERT was trained."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
