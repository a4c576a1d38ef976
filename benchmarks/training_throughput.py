"""Fine-tuning throughput: nlpkit's trainer against the transformers Trainer, side by side.

Same model, same SST-2 sample, same batch size, learning rate, precision and optimizer
(fused AdamW), both with length-grouped batches; one epoch each, timed from the first
to the last optimizer step. Prints examples per second for both and their ratio.

    .venv/bin/python benchmarks/training_throughput.py --model DIR [--examples 4000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from nlpkit.inference.loading import native_bf16
from nlpkit.models.files import quiet_loading
from nlpkit.store import migrated_database
from nlpkit.system.threads import configure_threads
from nlpkit.tasks.readers import seeded_sample
from nlpkit_plugins.sentiment import SentimentTask
from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"


class _Clock(TrainerCallback):
    """Times the Trainer's steps only (not its setup), as nlpkit's loop reports."""

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if state.global_step == 0:
            self.started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self.elapsed = time.perf_counter() - self.started


def transformers_trainer(model_dir: Path, examples: list, batch_size: int, lr: float, bf16: bool) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = {"negative": 0, "positive": 1}
    texts = [example.record.fields["text"] for example in examples]
    encoded = tokenizer(texts, truncation=True, max_length=128)
    dataset = [
        {"input_ids": ids, "attention_mask": mask, "labels": labels[example.target]}
        for ids, mask, example in zip(encoded["input_ids"], encoded["attention_mask"], examples, strict=True)
    ]
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    clock = _Clock()
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=batch_size, learning_rate=lr, num_train_epochs=1,
            warmup_steps=0.06, weight_decay=0.01, train_sampling_strategy="group_by_length",
            use_cpu=not torch.cuda.is_available(),
            bf16=bf16, optim="adamw_torch_fused", report_to=[], save_strategy="no", logging_strategy="no",
            eval_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=42,
        )  # fmt: skip
        Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
                callbacks=[clock]).train()  # fmt: skip
    return len(dataset) / clock.elapsed


def nlpkit_trainer(model_dir: Path, examples_file: Path, count: int, batch_size: int, lr: float, bf16: bool) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        database = migrated_database(f"sqlite:///{scratch}/bench.db")
        result = fine_tune(
            FineTuneConfig(task="sentiment", data=examples_file, base_model=str(model_dir), name="bench",
                           output_dir=Path(scratch) / "model", epochs=1, learning_rate=lr, batch_size=batch_size,
                           max_examples=count, max_length=128, precision="bf16" if bf16 else "fp32"),
            database,
        )  # fmt: skip
    return result.history[0]["train_examples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="a DistilBERT checkpoint (e.g. the converted starter)"
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--json-out", type=Path, help="also write both rates here, as JSON")
    args = parser.parse_args()
    threads = configure_threads()
    bf16 = native_bf16()
    examples = seeded_sample(SentimentTask.read_examples(args.data), args.examples, 42)
    theirs = transformers_trainer(args.model, examples, args.batch_size, args.lr, bf16)
    ours = nlpkit_trainer(args.model, args.data, args.examples, args.batch_size, args.lr, bf16)
    table = Table(title=f"fine-tuning on {args.examples} SST-2 examples, {threads} threads, "
                        f"{'bf16' if bf16 else 'fp32'}, batch {args.batch_size}")  # fmt: skip
    for column in ("trainer", "examples/s", "relative"):
        table.add_column(column, justify="left" if column == "trainer" else "right")
    table.add_row("transformers Trainer (group_by_length, fused AdamW)", f"{theirs:.1f}", "1.00")
    table.add_row("nlpkit train", f"{ours:.1f}", f"{ours / theirs:.2f}")
    Console().print(table)
    if args.json_out:
        args.json_out.write_text(json.dumps({"trainer": theirs, "nlpkit": ours, "bf16": bf16}))


if __name__ == "__main__":
    main()
