"""One benchmark variant in its own process: ``python -m nlpkit.bench.variant SPEC.json RESULT.json``.

Each variant (a transformers pipeline, the OpenVINO peer, the engine on one backend, the
whole streaming path) gets a fresh process, so its peak RSS and model load time are its own and no
variant warms caches for the next. The parent (:mod:`nlpkit.bench.suite`) compares results.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nlpkit.tasks.base import Record

WARMUP_RECORDS = 32
COMPARED_KEYS = ("label", "labels", "entities", "answers")  # what a pipeline can be compared on

Runner = Callable[[Sequence[Record]], list[Any]]


def comparable(output: dict[str, Any] | None) -> Any:
    """The part of an output every variant can state: label(s), entity spans or answer spans."""
    from nlpkit.inference.agreement import decision

    if output is None:
        return None
    kept = {key: decision(output[key]) for key in COMPARED_KEYS if key in output}
    if "labels" in kept:
        kept["labels"] = sorted(kept["labels"])
    return kept


def main(spec_file: str, result_file: str) -> None:
    from nlpkit.system.collector import collect_less_often
    from nlpkit.system.threads import configure_threads

    collect_less_often()  # every variant, as the nlpkit command does: no row pays for the collector walking torch

    spec = json.loads(Path(spec_file).read_text())
    configure_threads(spec["threads"])
    records = [Record(json.loads(line)) for line in Path(spec["records"]).read_text().splitlines()]
    _import_libraries(spec)
    started = time.perf_counter()
    run, extra = BUILDERS[spec["kind"]](spec)
    load_s = time.perf_counter() - started
    run(records[:WARMUP_RECORDS])  # first calls allocate and pick kernels: not throughput
    rates = matmul_rates(spec["threads"])  # the machine's rates right now, next to this variant's run
    outputs, best = None, {"seconds": float("inf")}
    for _ in range(spec.get("repeat", 1)):  # the fastest of the runs: the others met a busier machine
        started = time.perf_counter()
        produced = run(records)
        facts = {"seconds": time.perf_counter() - started} | extra()  # a runner may time only part of its call
        for key in ("seconds", "engine_seconds"):  # engine_seconds: a stream's engine, timed right after it
            if key in facts:
                best[key] = min(best.get(key, float("inf")), facts[key])
        outputs = produced if outputs is None else outputs  # the first run's answers (int8's depend on batching)
    facts |= best
    seconds = facts.pop("seconds")
    result = {
        "seconds": seconds,
        "load_s": load_s,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "matmul_gflops": rates,
        "outputs": [comparable(output) for output in outputs],
        "full_outputs": outputs if spec.get("keep_outputs") else None,
    } | facts
    Path(result_file).write_text(json.dumps(result))


def _import_libraries(spec: dict[str, Any]) -> None:
    """Import what the variant needs before the load clock starts: that is process start, not model load."""
    import transformers.pipelines  # noqa: F401

    import nlpkit.pipelines  # noqa: F401

    if spec.get("backend") in ("onnx", "int8"):
        import onnxruntime  # noqa: F401
    if spec["kind"] == "openvino-peer" or spec.get("backend", "").startswith("openvino"):
        import openvino  # noqa: F401


def matmul_rates(threads: int, seconds: float = 0.5) -> dict[str, float | None]:
    """The matrix-multiply rate this machine reaches now, in GFLOP/s (GOP/s for int8), for each
    precision a backend computes in; None where no kernel for it runs here.

    fp32 and bf16 are torch's. int8 is the faster of torch's ``_int_mm`` (oneDNN: VNNI, AMX) and
    ONNX Runtime's MatMulInteger (MLAS, what the int8 backend runs): on an AVX2-only CPU torch has
    only a slow fallback (2-3 GOP/s on Zen 3), against which int8 engines read thousands of percent.
    Where a precision has no hardware behind it (bf16 on an AVX2-only CPU) torch's fallback is
    hundreds of times slower, so each is measured on the largest square matrix (up to 2048) that
    one multiply handles in a tenth of a second: a second-long probe, not a minute-long one.
    """
    import torch

    torch.set_num_threads(threads)
    operands = {
        "fp32": (lambda size: (torch.randn(size, size),) * 2, torch.mm),
        "bf16": (lambda size: (torch.randn(size, size, dtype=torch.bfloat16),) * 2, torch.mm),
        "int8": (
            lambda size: (torch.randint(-128, 128, (size, size), dtype=torch.int8),) * 2,
            getattr(torch, "_int_mm", None),  # int8 x int8 -> int32, oneDNN's kernels on CPU
        ),
    }
    rates: dict[str, float | None] = {}
    for precision, (make, multiply) in operands.items():
        try:
            rates[precision] = _best_rate(make, multiply, seconds) if multiply else None
        except RuntimeError:  # no kernel for this type on this device
            rates[precision] = None
    onnx_int8 = _best_rate(_int8_operands, _onnx_int8_multiply(threads), seconds)
    rates["int8"] = max(rates["int8"] or 0.0, onnx_int8)
    return rates


def _int8_operands(size: int) -> tuple[Any, Any]:
    import numpy as np

    draw = np.random.default_rng(0)
    return draw.integers(0, 256, (size, size), dtype=np.uint8), draw.integers(-128, 128, (size, size), dtype=np.int8)


def _onnx_int8_multiply(threads: int) -> Callable[[Any, Any], Any]:
    """uint8 x int8 -> int32 through ONNX Runtime's MatMulInteger, the int8 backend's kernel."""
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["product"])],
        "int8-rate",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["n", "k"]),
         helper.make_tensor_value_info("b", TensorProto.INT8, ["k", "m"])],
        [helper.make_tensor_value_info("product", TensorProto.INT32, ["n", "m"])],
    )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda a, b: session.run(None, {"a": a, "b": b})


def _best_rate(make: Callable[[int], tuple[Any, Any]], multiply: Callable[[Any, Any], Any], seconds: float) -> float:
    size = 256
    a, b = make(size)
    while size < 2048:
        started = time.perf_counter()
        multiply(a, b)
        if time.perf_counter() - started > 0.1:
            break
        size *= 2
        a, b = make(size)
    multiply(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        multiply(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
        if time.perf_counter() >= deadline:
            return best


def _engine(spec: dict[str, Any]) -> tuple[Runner, Callable[[], dict[str, Any]]]:
    from nlpkit.inference.engine import Engine, RecordFailure
    from nlpkit.pipelines import load_task

    task = load_task(spec["task"], spec["model"], backend=spec["backend"], **spec["options"])
    engine = Engine(task, batch_size=spec["batch_size"], max_batch_tokens=spec["max_batch_tokens"])
    seen: list[Sequence[Record]] = []

    def run(records: Sequence[Record]) -> list[Any]:
        seen.append(records)
        return [None if isinstance(o, RecordFailure) else o.output for o in engine.run(records)]

    return run, lambda: work(task, seen[-1])  # counted after the clock stops


def work(task: Any, records: Sequence[Record]) -> dict[str, float]:
    """Real (unpadded) tokens, and the matmul FLOPs they need: in the whole model (``full_flops``,
    what a pipeline computes) and in what the engine runs (``flops``: a sequence classifier's
    last layer computes the first token only, :mod:`nlpkit.models.cls_only`)."""
    from nlpkit.models.files import ModelShape

    shape = ShapeFlops(ModelShape.of(task.model.config))
    lengths = [len(window.input_ids) for windows in task.windows(records) for window in windows]
    full = sum(shape.layer(n) for n in lengths) * shape.layers
    if task.model.first_token_only:
        engine = sum(shape.layer(n) * (shape.layers - 1) + shape.first_token_layer(n) for n in lengths)
    else:
        engine = full
    return {"tokens": float(sum(lengths)), "flops": float(engine), "full_flops": float(full)}


class ShapeFlops:
    """Matrix-multiply FLOPs of one encoder layer for a window of ``n`` tokens."""

    def __init__(self, shape: Any) -> None:
        self.hidden, self.ffn, self.layers = shape.hidden, shape.ffn, shape.layers

    def layer(self, n: int) -> int:
        linear = 2 * (4 * self.hidden**2 + 2 * self.hidden * self.ffn)  # q, k, v, out projections and the FFN
        return n * linear + 4 * n * n * self.hidden  # + attention scores and weighted values

    def first_token_layer(self, n: int) -> int:
        keys_values = n * 2 * 2 * self.hidden**2
        one_token = 2 * (2 * self.hidden**2 + 2 * self.hidden * self.ffn)  # its query, out projection and FFN
        return keys_values + one_token + 4 * n * self.hidden


def _pipeline(spec: dict[str, Any]) -> tuple[Runner, Callable[[], dict[str, Any]]]:
    """transformers' pipeline, fed the records in their order."""
    from transformers import pipeline

    from nlpkit.bench.baselines import BASELINES

    baseline = BASELINES[spec["task"]]
    kwargs = {"batch_size": spec["pipeline_batch_size"]} if spec["pipeline_batch_size"] else {}
    hf = pipeline(baseline.pipeline_task, model=spec["model_path"], device="cpu", **baseline.load_options)

    def run(records: Sequence[Record]) -> list[Any]:
        options = baseline.call_options(spec["max_length"])
        outputs = hf([baseline.inputs(record) for record in records], **kwargs, **options)
        return [baseline.convert(record, output) for record, output in zip(records, outputs, strict=True)]

    return run, dict


def _openvino_peer(spec: dict[str, Any]) -> tuple[Runner, Callable[[], dict[str, Any]]]:
    """The peer (:mod:`nlpkit.bench.peers`): the pipeline's model (quantized by NNCF where the spec says so)
    run by OpenVINO with the spec's performance hint, fed length-sorted texts, with as many batches in flight
    as OpenVINO asks for: a text classifier in the loop its users write, token classification inside the
    pipeline (one per batch in flight)."""
    import openvino
    from transformers import pipeline

    from nlpkit.bench import peers
    from nlpkit.bench.baselines import BASELINES
    from nlpkit.inference.openvino.runtime import compiled_precision

    baseline = BASELINES[spec["task"]]
    hf = pipeline(baseline.pipeline_task, model=spec["model_path"], device="cpu", **baseline.load_options)
    calibration = []
    if spec.get("quantized"):
        texts = [baseline.inputs(Record(json.loads(line))) for line in Path(spec["records"]).read_text().splitlines()]
        calibration = peers.calibration_sample(texts)
    compiled, names = peers.compiled_for(hf, spec["threads"], spec["hint"], calibration, spec["max_length"])
    in_flight = peers.in_flight(compiled)
    looped = baseline.pipeline_task == "text-classification"
    if looped:
        queue = openvino.AsyncInferQueue(compiled, in_flight)  # its requests made here, not in the timed runs
    else:
        peers.openvino_forward(hf, compiled, names)
        # Each pipeline its own tokenizer (no fast tokenizer may serve two threads at once), all one model.
        lanes = [hf] + [
            pipeline(
                baseline.pipeline_task,
                model=hf.model,
                tokenizer=spec["model_path"],
                device="cpu",
                **baseline.load_options,
            )
            for _ in range(in_flight - 1)
        ]

    def run(records: Sequence[Record]) -> list[Any]:
        inputs = [baseline.inputs(record) for record in records]
        order = peers.by_length(hf.tokenizer, inputs)
        options = baseline.call_options(spec["max_length"]) | {"batch_size": spec["pipeline_batch_size"]}
        ordered = [inputs[i] for i in order]
        answers = (
            peers.classify(hf, queue, names, ordered, options)
            if looped
            else peers.run_in_flight(lanes, ordered, options)
        )
        outputs = dict(zip(order, answers, strict=True))
        return [baseline.convert(record, outputs[i]) for i, record in enumerate(records)]

    precision = "int8" if calibration else compiled_precision(compiled)  # int8's float parts: OpenVINO's default
    facts = {"precision": precision, "in_flight": in_flight}
    return run, lambda: dict(facts)


def _stream(spec: dict[str, Any]) -> tuple[Runner, Callable[[], dict[str, Any]]]:
    """A worker draining a topic that holds every record: from its partition's assignment until the last
    record is stored in SQLite and its offset committed."""
    from sqlalchemy import select

    from nlpkit.inference.engine import Engine
    from nlpkit.pipelines import load_task
    from nlpkit.store import PredictionRow, migrated_database
    from nlpkit.stream.kafka_clients import create_topic, produce
    from nlpkit.stream.worker import Worker, WorkerConfig

    task = load_task(spec["task"], spec["model"], backend=spec["backend"], **spec["options"])
    engine = Engine(task, batch_size=spec["batch_size"], max_batch_tokens=spec["max_batch_tokens"])
    scratch = Path(tempfile.mkdtemp(prefix="nlpkit-bench-"))
    database = migrated_database(f"sqlite:///{scratch / 'bench.db'}")
    servers = spec["bootstrap_servers"]
    timed: dict[str, float] = {}

    def run(records: Sequence[Record]) -> list[Any]:
        topic = f"bench-{uuid.uuid4().hex[:10]}"
        create_topic(servers, topic, partitions=1)
        config = WorkerConfig(topics=[topic], group=topic, bootstrap_servers=servers, max_messages=len(records))
        worker = Worker(config, {spec["task"]: engine}, database)
        # A backlog, as a worker meets one after a restart or a deploy: every message in the topic before the
        # clock starts, so the row is the worker's throughput, none of it the producer's (sending beside the
        # worker, from a thread of this process or from another process on the same 2 cores, the producer
        # held the worker's first poll back by 0.1-0.6 s in a 5 s run on CoNLL valid).
        produce(servers, topic, [(str(i), json.dumps(dict(r.fields))) for i, r in enumerate(records)])
        _commit_group_start(servers, topic)
        stats = worker.run()  # the worker on the main thread, as under `nlpkit consume`
        # From the partition's assignment to the last commit: joining the group is start-up and leaving it
        # shutdown, not throughput.
        timed["seconds"] = stats.committed_at - stats.assigned_at
        # The same engine on the same records, right after: what the stream keeps of its engine, measured
        # minutes apart in other processes, is mostly the noise of a shared machine.
        started = time.perf_counter()
        engine.run(records)
        timed["engine_seconds"] = time.perf_counter() - started
        with database.session() as session:
            rows = session.execute(
                select(PredictionRow.source_offset, PredictionRow.output).where(PredictionRow.source_topic == topic)
            ).all()
        by_offset = {offset: output for offset, output in rows}
        return [by_offset.get(index) for index in range(len(records))]

    return run, lambda: dict(timed)


def _commit_group_start(servers: str, topic: str) -> None:
    """Offset 0 committed for the group named after ``topic``, as a worker restarted onto a backlog finds
    its group's offsets: a group that has committed nothing first asks for the partition's start after a
    fixed wait in librdkafka (0.1 s from the assignment to the first message, against 3 ms with an
    offset committed; 8% of a stream row on SST-2 dev)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from nlpkit.stream.kafka_clients import admin_client

    admin = admin_client(servers)  # held until the answer: a collected client never completes its futures
    request = [ConsumerGroupTopicPartitions(topic, [TopicPartition(topic, 0, 0)])]
    for future in admin.alter_consumer_group_offsets(request).values():
        future.result(timeout=30)


BUILDERS = {"engine": _engine, "pipeline": _pipeline, "openvino-peer": _openvino_peer, "stream": _stream}

if __name__ == "__main__":
    main(*sys.argv[1:3])
