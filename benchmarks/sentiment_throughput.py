"""Sentiment throughput on the same reviews and model: the engine alone, then end to end.

End to end means: produce every review to a fresh topic, a worker consumes them,
predicts, writes SQLite and commits offsets; the clock stops when the last row is
stored. Both figures come from one run on one machine, printed side by side.

    .venv/bin/python benchmarks/sentiment_throughput.py --model sst2-minilm [--count 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nlpkit import dbmigrate
from nlpkit.engine import Engine
from nlpkit.kafkaio import create_topic, file_messages, produce
from nlpkit.localservices.kafka import KafkaBroker
from nlpkit.modeling import configure_threads
from nlpkit.pipelines import load_task
from nlpkit.store import Database
from nlpkit.stream import Worker, WorkerConfig
from nlpkit.tasks import Record

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory or registered name")
    parser.add_argument("--data", type=Path, default=DATA / "imdb" / "train.jsonl")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--batch-size", type=int, default=256, help="worker messages per poll")
    args = parser.parse_args()

    threads = configure_threads()
    messages = file_messages(args.data, sample=args.count, seed=args.seed)
    records = [Record({"text": json.loads(value)["text"]}) for _key, value in messages]
    task = load_task("sentiment", args.model)
    engine = Engine(task)
    engine.predict(records[:32])  # warm-up: first-call allocations are not throughput

    started = time.perf_counter()
    engine.predict(records)
    engine_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as scratch, KafkaBroker(Path(scratch) / "kafka") as broker:
        database = Database(f"sqlite:///{Path(scratch) / 'bench.db'}")
        dbmigrate.upgrade(database.engine)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap_servers, topic, partitions=1)
        config = WorkerConfig(
            topics=[topic], group=topic, bootstrap_servers=broker.bootstrap_servers,
            batch_size=args.batch_size, max_messages=len(messages),
        )  # fmt: skip
        produce(broker.bootstrap_servers, topic, messages)
        started = time.perf_counter()
        stats = Worker(config, {"sentiment": engine}, database).run()
        streaming_seconds = time.perf_counter() - started
        database.dispose()

    table = Table(title=f"sentiment, {len(records)} reviews from {args.data.name}, {threads} threads")
    for column in ("path", "seconds", "reviews/s", "relative"):
        table.add_column(column, justify="right" if column != "path" else "left")
    engine_rate = len(records) / engine_seconds
    stream_rate = stats.predictions / streaming_seconds
    table.add_row("engine alone (one call, all records)", f"{engine_seconds:.1f}", f"{engine_rate:.1f}", "1.00")
    table.add_row(
        "Kafka -> engine -> SQLite -> commit", f"{streaming_seconds:.1f}", f"{stream_rate:.1f}",
        f"{stream_rate / engine_rate:.2f}",
    )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
