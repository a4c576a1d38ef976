"""Commands about speed: ``nlpkit bench`` and ``nlpkit models quantize``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from nlpkit import settings
from nlpkit.cli.common import CliState, bootstrap_option, pass_state
from nlpkit.errors import NlpkitError
from nlpkit.inference.backends import BACKENDS

stderr = Console(stderr=True)

data_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def _calibration_records(task_class: Any, data: Path, limit: int, seed: int) -> list[Any]:
    from nlpkit.bench.suite import sample_examples

    return [example.record for example in sample_examples(task_class.read_examples(data), limit, seed)]


@click.command("quantize")
@click.argument("model")
@click.option("--task", "task_name", required=True, help="The task the model was trained for.")
@click.option(
    "--data", required=True, type=data_file, help="Real inputs to calibrate on (any file the task trains on)."
)
@click.option("--limit", default=2000, show_default=True, help="Calibration records drawn at random from --data.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Least agreement with fp32 [setting, 0.99].")
@click.option("--seed", default=0, show_default=True)
@pass_state
def quantize(
    state: CliState, model: str, task_name: str, data: Path, limit: int, min_agreement: float | None, seed: int
) -> None:
    """Make the int8 version of MODEL for --backend int8, keeping layers in fp32 until it agrees.

    Weights are int8 per output channel; the few input channels with outlier
    activations on the calibration records are multiplied in fp32 beside the int8
    product; layers whose quantization moves answers most stay fp32 until at least
    --min-agreement of the calibration records get the same answer as fp32. The
    result is cached beside the model.
    """
    from nlpkit.inference.onnx.quantize import quantize as make_int8
    from nlpkit.pipelines import ModelRegistry, load_task
    from nlpkit.plugins import get_task_class
    from nlpkit.system.threads import configure_threads

    configure_threads()
    threshold = settings.get_fraction("min_agreement", None if min_agreement is None else str(min_agreement))
    task = load_task(task_name, model, registry=ModelRegistry(state.database(check=False)))
    records = _calibration_records(get_task_class(task_name), data, limit, seed)
    with stderr.status("quantizing") as status:
        report = make_int8(task, records, min_agreement=threshold, data=str(data), progress=status.update)
    verdict = "usable" if report.agreement >= threshold else "REFUSED by the int8 backend"
    stderr.print(
        f"int8 model of '{model}': agreement {report.agreement:.2%} on {report.records} records "
        f"(minimum {threshold:.0%}), {report.quantized} nodes int8, {len(report.kept_fp32)} kept fp32, "
        f"{report.outlier_channels} outlier input channels fp32, {report.seconds:.0f} s: {verdict}"
    )
    if report.agreement < threshold:
        raise NlpkitError("the int8 model did not reach the minimum agreement; use --backend onnx")


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``nlpkit bench`` is asked besides the task, model, data and backends: one typed
    field per option, so the command reads ``options.repeat`` rather than ``options.repeat``."""

    limit: int | None
    max_length: int | None
    calibration_data: Path | None
    batch_size: int
    max_batch_tokens: int | None
    threads: int | None
    no_pipeline: bool
    no_stream: bool
    bootstrap_servers: str | None
    repeat: int
    seed: int
    as_json: bool


@click.command()
@click.argument("task_name", metavar="TASK")
@click.option("--model", required=True, metavar="REF", help="Model directory or registered name.")
@click.option(
    "--data", required=True, type=data_file, help="A labelled file the task reads (SST-2 TSV, IMDb JSONL...)."
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(list(BACKENDS)),
    help="Engine backend to time (repeatable) [all].",
)
@click.option("--limit", type=click.IntRange(1), help="Records drawn at random from --data [all].")
@click.option("--max-length", type=click.IntRange(8), help="Cut every text to this many tokens first (all variants).")
@click.option(
    "--calibration-data", type=data_file, help="Inputs to make the int8 model from, if it is missing [--data]."
)
@click.option("--batch-size", default=32, show_default=True, help="Most sequences per engine batch.")
@click.option("--max-batch-tokens", type=click.IntRange(1), help="Padded-token budget per engine batch [2048 CPU].")
@click.option("--threads", type=click.IntRange(1), help="Intra-op threads [usable CPUs, or NLPKIT_THREADS].")
@click.option("--no-pipeline", is_flag=True, help="Skip the transformers pipeline baselines.")
@click.option("--no-stream", is_flag=True, help="Skip the streaming run (it starts a local Kafka broker).")
@bootstrap_option
@click.option(
    "--repeat", default=3, show_default=True, type=click.IntRange(1), help="Timed runs per variant; the fastest counts."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON objects, one per line.")
@pass_state
def bench(state: CliState, task_name: str, model: str, data: Path, backends: tuple[str, ...], **given: Any) -> None:
    """Time the transformers pipeline, the engine on each backend and the streaming path, side by side."""
    from contextlib import ExitStack

    from nlpkit.bench import suite as benchmark
    from nlpkit.models.files import resolve_model_path
    from nlpkit.pipelines import ModelRegistry
    from nlpkit.plugins import get_task_class
    from nlpkit.system.threads import configure_threads

    options = BenchOptions(**given)
    task_class = get_task_class(task_name)
    registry = ModelRegistry(state.database(check=False))
    _name, path = resolve_model_path(model, registry.path)
    threads = configure_threads(options.threads)
    examples = benchmark.sample_examples(task_class.read_examples(data), options.limit, options.seed)
    if options.max_length:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        cut = benchmark.cut_texts([e.record for e in examples], tokenizer, options.max_length)
        examples = [type(e)(record, e.target, e.source) for e, record in zip(examples, cut, strict=True)]
    chosen = list(backends or BACKENDS)
    if "int8" in chosen:
        _ensure_int8(task_name, model, registry, options.calibration_data or data, options.seed)
    with ExitStack() as stack:
        servers = options.bootstrap_servers
        if not options.no_stream and servers is None:
            servers = _local_broker(stack)
        plan = benchmark.BenchPlan(
            task=task_name,
            model=str(path),
            model_path=path,
            examples=examples,
            backends=chosen,
            threads=threads,
            pipelines=not options.no_pipeline,
            stream=not options.no_stream,
            bootstrap_servers=servers,
            max_length=options.max_length,
            batch_size=options.batch_size,
            max_batch_tokens=options.max_batch_tokens,
            repeat=options.repeat,
        )
        with stderr.status("benchmarking") as status:
            rows, facts = benchmark.run(plan, status.update)
    if options.as_json:
        for row in rows:
            click.echo(json.dumps(asdict(row)))
        return
    title = f"{task_name} · {path.name} · {len(examples)} records of {data.name} · {threads} threads"
    _print_table(rows, title, facts)


def _ensure_int8(task_name: str, model: str, registry: Any, data: Path, seed: int) -> None:
    """Make the int8 model with the default calibration when it does not exist yet."""
    from nlpkit.inference.onnx import runtime
    from nlpkit.inference.onnx.quantize import quantize as make_int8
    from nlpkit.pipelines import load_task
    from nlpkit.plugins import get_task_class

    task = load_task(task_name, model, registry=registry)
    if runtime.read_report(
        runtime.cache_dir(task.model.path, task.model.revision), runtime.INT8_REPORT, task.model.revision
    ):
        return
    records = _calibration_records(get_task_class(task_name), data, 512, seed)
    threshold = settings.get_fraction("min_agreement")
    with stderr.status("making the int8 model") as status:
        make_int8(task, records, min_agreement=threshold, data=str(data), progress=status.update)


def _local_broker(stack: Any) -> str:
    import tempfile

    from nlpkit.localservices.kafka import KafkaBroker

    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="nlpkit-bench-kafka-"))
    with stderr.status("starting a local Kafka broker for the streaming run"):
        broker = stack.enter_context(KafkaBroker(Path(scratch)))
    return broker.bootstrap_servers


def _print_table(rows: list[Any], title: str, facts: dict[str, Any]) -> None:
    table = Table(title=title, caption=_caption(facts))
    for column in (
        "variant",
        "seq/s",
        "tokens/s",
        "x pipeline",
        "% peak",
        "agreement",
        "metric",
        "RSS MB",
        "load s",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        metric = next(iter(row.metrics.items()), None)
        table.add_row(
            row.variant,
            f"{row.seq_per_s:,.1f}",
            f"{row.tokens_per_s:,.0f}",
            "" if row.ratio_to_pipeline is None else f"{row.ratio_to_pipeline:.2f}",
            "" if row.peak_fraction is None else f"{row.peak_fraction:.0%}",
            "" if row.agreement is None else f"{row.agreement:.2%}",
            "" if metric is None else f"{metric[0]} {metric[1]:.4f}",
            f"{row.rss_mb:,.0f}",
            f"{row.load_s:.2f}",
        )
    Console().print(table)


def _caption(facts: dict[str, Any]) -> str:
    from nlpkit.system.hardware import describe

    rates = ", ".join(f"{precision} {rate:,.0f}" for precision, rate in facts["matmul_gflops"].items())
    return (
        f"{describe()}. x pipeline: throughput over the faster transformers pipeline setting; % peak: model "
        "FLOPs on real tokens over this machine's matmul rate now in the precision the variant computes in "
        f"(GFLOP/s: {rates}); agreement: same answers as engine torch (fp32)"
    )


COMMANDS = (bench,)
