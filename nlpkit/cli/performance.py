"""Commands about speed: ``nlpkit bench``, ``nlpkit models quantize`` and ``nlpkit models tune``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from nlpkit import settings
from nlpkit.cli.common import CliState, bootstrap_option, pass_state
from nlpkit.errors import NlpkitError
from nlpkit.inference.backends import BACKENDS, INT8_BACKENDS, backends_here
from nlpkit.system.hardware import gpus
from nlpkit.tasks.readers import seeded_sample

stderr = Console(stderr=True)
# Backends the bench times only when --backend names them or their model is already made: making
# openvino-int8's re-runs NNCF for every node its search keeps in fp32 (684 s for the 6-layer MiniLM on 2 Zen 3 cores).
UNLESS_NAMED_OR_MADE = ("openvino-int8",)


def _bench_by_default(name: str, path: Path) -> bool:
    """Whether the bench times ``name`` on the model in ``path`` when --backend names none: not the
    slow-to-make ones above unless made for these weights, and not torch's bf16 where it would be emulated
    (SST-2 dev: 12 sentences/s against fp32 torch's 29 on 2 busy Zen 3 cores), which `--backend auto` skips too."""
    if name in UNLESS_NAMED_OR_MADE:
        return _int8_made(name, path)
    return not BACKENDS[name].emulated(on_cpu=not gpus())


def _int8_made(backend: str, path: Path) -> bool:
    """Whether ``backend``'s int8 model exists for the weights in ``path`` and would load here: made for this
    kind of CPU, and at the agreement the gate asks for."""
    from nlpkit.errors import NlpkitError
    from nlpkit.models.files import model_revision

    _make_int8, runtime = _int8_tools(backend)
    try:
        runtime.cached_model(path.name, path, model_revision(path), "int8", settings.get_fraction("min_agreement"))
    except NlpkitError:  # none made, made for a CPU with VNNI, or refused by the gate
        return False
    return True


data_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@contextmanager
def _progress(activity: str) -> Iterator[Callable[[str], None]]:
    """Where a long command reports its steps: one status line updated in place on a terminal; in a
    log or CI, one line per step with the seconds since it began, so minutes of work are never silent."""
    if stderr.is_terminal:
        with stderr.status(activity) as status:
            yield status.update
        return
    started = time.perf_counter()
    stderr.print(f"{activity}...", markup=False, highlight=False)
    yield lambda step: stderr.print(f"{time.perf_counter() - started:7.1f} s  {step}", markup=False, highlight=False)


def _calibration_records(task_class: Any, data: Path, limit: int, seed: int) -> list[Any]:
    return [example.record for example in seeded_sample(task_class.read_examples(data), limit, seed)]


@click.command("quantize")
@click.argument("model")
@click.option("--task", "task_name", required=True, help="The task the model was trained for.")
@click.option(
    "--data", required=True, type=data_file, help="Real inputs to calibrate on (any file the task trains on)."
)
@click.option("--limit", default=2000, show_default=True, help="Calibration records drawn at random from --data.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Least agreement with fp32 [setting, 0.99].")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(INT8_BACKENDS),
    default="int8",
    show_default=True,
    help="Which int8 backend to make the model for: ONNX Runtime's (dynamic int8) or OpenVINO's (NNCF).",
)
@pass_state
def quantize(
    state: CliState,
    model: str,
    task_name: str,
    data: Path,
    limit: int,
    min_agreement: float | None,
    seed: int,
    backend: str,
) -> None:
    """Make the int8 version of MODEL for --backend int8 (or openvino-int8), keeping layers in fp32 until it agrees.

    Weights are int8 per output channel; activation outliers on the calibration records
    are multiplied in fp32 beside the int8 product (int8) or scaled into the weights by
    SmoothQuant (openvino-int8); layers whose quantization moves answers most stay fp32
    until at least --min-agreement of the calibration records get the same answer as
    fp32. The result is cached beside the model.
    """
    from nlpkit.pipelines import ModelRegistry, load_task
    from nlpkit.plugins import get_task_class
    from nlpkit.system.threads import configure_threads

    configure_threads()
    threshold = settings.get_fraction("min_agreement", None if min_agreement is None else str(min_agreement))
    task = load_task(task_name, model, registry=ModelRegistry(state.database(check=False)))
    records = _calibration_records(get_task_class(task_name), data, limit, seed)
    make_int8, _cache = _int8_tools(backend)
    with _progress("quantizing") as progress:
        report = make_int8(task, records, min_agreement=threshold, data=str(data), progress=progress)
    verdict = "usable" if report.agreement >= threshold else f"REFUSED by the {backend} backend"
    outliers = "" if report.outlier_channels is None else f"{report.outlier_channels} outlier input channels fp32, "
    stderr.print(
        f"{backend} model of '{model}': agreement {report.agreement:.2%} on {report.records} records "
        f"(minimum {threshold:.0%}), {report.quantized} nodes int8, {len(report.kept_fp32)} kept fp32, "
        f"{outliers}{report.seconds:.0f} s: {verdict}"
    )
    if report.agreement < threshold:
        fallback = "openvino" if backend == "openvino-int8" else "onnx"
        raise NlpkitError(f"the {backend} model did not reach the minimum agreement; use --backend {fallback}")


def _int8_tools(backend: str) -> tuple[Any, Any]:
    """The quantizer that makes an int8 backend's model and the runtime module that caches it (imported
    here, on demand: a quantizer imports torch)."""
    if backend == "openvino-int8":
        from nlpkit.inference.openvino import runtime
        from nlpkit.inference.openvino.quantize import quantize as make_int8
    else:
        from nlpkit.inference.onnx import runtime
        from nlpkit.inference.onnx.quantize import quantize as make_int8
    return make_int8, runtime


@click.command("tune")
@click.argument("model")
@click.option("--task", "task_name", required=True, help="The task the model was trained for.")
@click.option(
    "--data", type=data_file, help="Labelled inputs to time on [its training run's evaluation data, else data]."
)
@click.option("--limit", default=500, show_default=True, type=click.IntRange(1), help="Records drawn from --data.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Least agreement with fp32 [setting, 0.99].")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(list(BACKENDS)),
    help="A candidate (repeatable) [every backend this machine runs].",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--if-missing", is_flag=True, help="Keep a choice already recorded here for these weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded entry as JSON instead of a table.")
@pass_state
def tune(
    state: CliState,
    model: str,
    task_name: str,
    data: Path | None,
    limit: int,
    min_agreement: float | None,
    backends: tuple[str, ...],
    device: str,
    seed: int,
    if_missing: bool,
    as_json: bool,
) -> None:
    """Choose the backend `--backend auto` runs MODEL on here: the fastest that agrees with fp32.

    Loads MODEL on each backend this machine runs, times the engine over a sample of --data
    (length-sorted batches, a short warm-up, one timed pass), measures each one's agreement with
    fp32 torch on the same records, and records the fastest whose agreement reaches the minimum,
    beside the model, for these weights and this machine's CPU flags and threads. int8 backends are
    timed only where `nlpkit models quantize` already made their file: that is slow, and tuning never does it.
    """
    from nlpkit.inference import tuning
    from nlpkit.inference.loading import load_model
    from nlpkit.models.files import model_revision, resolve_model_path
    from nlpkit.pipelines import ModelRegistry
    from nlpkit.plugins import get_task_class
    from nlpkit.system.threads import configure_threads

    configure_threads()
    threshold = settings.get_fraction("min_agreement", None if min_agreement is None else str(min_agreement))
    task_class = get_task_class(task_name)
    registry = ModelRegistry(state.database(check=False))
    name, path = resolve_model_path(model, registry.path)
    revision = model_revision(path)

    def load(backend: str) -> Any:
        loaded = load_model(model, task_class.model_class, backend=backend, device=device, lookup=registry.path,
                            min_agreement=threshold)  # fmt: skip
        return task_class(loaded)

    sample = data or next(iter(registry.training_data(path)), None)
    no_data = NlpkitError(
        f"model '{name}' has no recorded training run whose data is here: pass --data FILE "
        f"(labelled inputs the {task_name} task reads)"
    )
    if sample is None and not if_missing:
        raise no_data
    with tuning.exclusive(path, revision):
        result = tuning.recorded(path, revision, device) if if_missing else None
        kept = result is not None
        if result is None:
            if sample is None:
                raise no_data
            records = _calibration_records(task_class, sample, limit, seed)
            drawn = {"data": str(sample.resolve()), "records": len(records), "seed": seed}
            with _progress("tuning") as progress:
                result = tuning.tune(load, records, revision=revision, sample=drawn, min_agreement=threshold,
                                     candidates=backends, device=device, progress=progress)  # fmt: skip
            tuning.save(path, result)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    title = f"{task_name} · {name} · {result.sample['records']} records of {Path(result.sample['data']).name}"
    table = Table("backend", "seq/s", "agreement", "verdict", title=title, caption=f"{result.machine}")
    for measured in result.measurements:
        speed = "" if measured.seq_per_s is None else f"{measured.seq_per_s:,.1f}"
        agrees = "" if measured.agreement is None else f"{measured.agreement:.2%}"
        table.add_row(measured.backend, speed, agrees, result.verdict(measured, threshold))
    Console().print(table)
    when = f"kept the choice recorded {result.tuned_at}" if kept else f"tuned in {result.seconds:.0f} s"
    stderr.print(
        f"--backend auto runs '{name}' on {result.choice(threshold)} on this machine ({result.fingerprint}): "
        f"{when}, recorded in {tuning.record_file(path, revision)}"
    )


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``nlpkit bench`` is asked besides the task, model, data and backends: one typed
    field per option, so the command reads ``options.repeat`` rather than ``given["repeat"]``."""

    limit: int | None
    max_length: int | None
    calibration_data: Path | None
    batch_size: int
    max_batch_tokens: int | None
    threads: int | None
    no_pipeline: bool
    no_peer: bool
    no_stream: bool
    bootstrap_servers: str | None
    rounds: int
    repeat: int
    seed: int
    as_json: bool
    markdown: bool


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
    help="Engine backend to time (repeatable) [all this machine runs; openvino-int8 only when named, since "
    "making it is NNCF's search: minutes to over ten on 2 cores].",
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
@click.option(
    "--no-peer", is_flag=True, help="Skip the OpenVINO peer (convert_model, length-sorted batches of 32, both hints)."
)
@click.option("--no-stream", is_flag=True, help="Skip the streaming run (it starts a local Kafka broker).")
@bootstrap_option
@click.option(
    "--rounds",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="Times every variant runs, in a fresh process each, taking turns with the others; the fastest counts, "
    "so a slow minute on a shared machine costs every row a round, not one row its figure.",
)
@click.option(
    "--repeat",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="Timed runs per variant in each round, after a warm-up; the fastest counts.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON objects, one per line.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown, as docs/PERFORMANCE.md shows it.")
@pass_state
def bench(state: CliState, task_name: str, model: str, data: Path, backends: tuple[str, ...], **given: Any) -> None:
    """Time the transformers pipeline, the OpenVINO peer, the engine on each backend and the streaming path,
    side by side."""
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
    examples = seeded_sample(task_class.read_examples(data), options.limit, options.seed)
    if options.max_length:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        cut = benchmark.cut_texts([e.record for e in examples], tokenizer, options.max_length)
        examples = [type(e)(record, e.target, e.source) for e, record in zip(examples, cut, strict=True)]
    chosen = list(backends or (name for name in backends_here() if _bench_by_default(name, path)))
    for backend in INT8_BACKENDS:
        if backend in chosen:
            _ensure_int8(backend, task_name, model, registry, options.calibration_data or data, options.seed)
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
            peer=not options.no_peer,
            stream=not options.no_stream,
            bootstrap_servers=servers,
            max_length=options.max_length,
            batch_size=options.batch_size,
            max_batch_tokens=options.max_batch_tokens,
            options=_read_as_pipelines_read(task_class),
            repeat=options.repeat,
            rounds=options.rounds,
        )
        with _progress("benchmarking") as progress:
            rows, facts = benchmark.run(plan, progress)
    if options.as_json:
        for row in rows:
            click.echo(json.dumps(asdict(row)))
        return
    title = f"{task_name} · {path.name} · {len(examples)} records of {data.name} · {threads} threads"
    _print_table(rows, title, facts, options.markdown)


def _read_as_pipelines_read(task_class: Any) -> dict[str, Any]:
    """Task options that make the engine read what transformers' pipelines read: one window per text,
    truncated at the model's maximum, even where the model names a window of its own (the demo's reads
    reviews in windows of 128 tokens, and every row is measured against pipelines that truncate)."""
    return {"window": 0} if any(option.name == "window" for option in task_class.options) else {}


def _ensure_int8(backend: str, task_name: str, model: str, registry: Any, data: Path, seed: int) -> None:
    """Make ``backend``'s int8 model with the default calibration when it does not exist yet."""
    from nlpkit.errors import ModelNotFoundError
    from nlpkit.pipelines import load_task
    from nlpkit.plugins import get_task_class

    task = load_task(task_name, model, registry=registry)
    make_int8, runtime = _int8_tools(backend)
    try:
        runtime.cached_model(task.model.name, task.model.path, task.model.revision, "int8", min_agreement=0.0)
    except ModelNotFoundError:
        records = _calibration_records(get_task_class(task_name), data, 512, seed)
        threshold = settings.get_fraction("min_agreement")
        with _progress(f"making the {backend} model") as progress:
            make_int8(task, records, min_agreement=threshold, data=str(data), progress=progress)


def _local_broker(stack: Any) -> str:
    import tempfile

    from nlpkit.localservices.kafka import KafkaBroker

    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="nlpkit-bench-kafka-"))
    with stderr.status("starting a local Kafka broker for the streaming run"):
        broker = stack.enter_context(KafkaBroker(Path(scratch)))
    return broker.bootstrap_servers


def _print_table(rows: list[Any], title: str, facts: dict[str, Any], markdown: bool = False) -> None:
    from rich import box

    table = Table(title=title, caption=_caption(rows, facts), box=box.MARKDOWN if markdown else box.HEAVY_HEAD)
    for column in (
        "variant",
        "seq/s",
        "tokens/s",
        "x pipeline",
        "x peer",
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
            "" if row.ratio_to_peer is None else f"{row.ratio_to_peer:.2f}",
            "" if row.peak_fraction is None else f"{row.peak_fraction:.0%}",
            "" if row.agreement is None else f"{row.agreement:.2%}",
            "" if metric is None else f"{metric[0]} {metric[1]:.4f}",
            f"{row.rss_mb:,.0f}",
            f"{row.load_s:.2f}",
        )
    Console(width=300 if markdown else None).print(table)  # a Markdown row must not wrap


def _caption(rows: list[Any], facts: dict[str, Any]) -> str:
    from nlpkit.system.hardware import describe

    rates = ", ".join(f"{precision} {rate:,.0f}" for precision, rate in facts["matmul_gflops"].items())
    share = next((row.share_of_engine for row in rows if row.share_of_engine is not None), None)
    stream = (
        ""
        if share is None
        else f"; the stream kept {share:.0%} of its engine's throughput, timed after it in the same process"
    )
    peer = facts.get("peer")
    yardstick = f" (here: {peer})" if peer else " (none agreed this run)"
    return (
        f"{describe()}. x pipeline: throughput over the faster transformers pipeline setting; x peer: over "
        "OpenVINO run as its users run it (convert_model, length-sorted batches of 32, its latency or throughput "
        "hint, its default precision or NNCF int8 on 300 of these inputs), the fastest of those that agrees with "
        f"fp32 on at least 99%{yardstick}; % peak: model "
        "FLOPs on real tokens over this machine's matmul rate now in the precision the variant computes in "
        f"(GFLOP/s: {rates}); agreement: same answers as engine torch (fp32){stream}; each row the fastest of "
        f"{facts['rounds']} round(s) of {facts['repeat']} run(s), the variants taking turns"
    )


COMMANDS = (bench,)
