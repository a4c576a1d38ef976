"""The best peer on the same machine: OpenVINO, run the way its users run a transformers model.

A peer user converts the transformers weights with ``openvino.convert_model`` and compiles them
for the CPU on the same threads with OpenVINO's defaults, so it computes in bf16 where the CPU has
bf16 units. The texts go in sorted by length, 32 to a batch, each batch padded to its own longest:
what a user who knows CPU batching does. OpenVINO offers two modes, and the bench runs both: the
latency hint (what optimum-intel sets by default), one batch at a time on every thread, and the
throughput hint, as many batches in flight as OpenVINO says are optimal
(``OPTIMAL_NUMBER_OF_INFER_REQUESTS``), each on a stream of its own. Each mode also runs the model
quantized to int8 as OpenVINO's own notebooks do it for transformers: NNCF's post-training quantization
with the transformer preset (SmoothQuant; LayerNorm, Softmax and GELU left in float), calibrated on 300
inputs (NNCF's default subset) drawn from the texts being timed, the unquantized parts in OpenVINO's
default precision. NNCF's plain preset is no candidate: on SST-2 dev it agreed with fp32 on 77.75%
(``imdb-minilm``, Zen 4), the transformer preset on 98.97% calibrated on dev sentences (99.20% on
training phrases), at about 1.5 times the bf16 peer's speed. The bench sets rows against the fastest
peer that agrees on at least 99% (:data:`nlpkit.bench.suite.MIN_AGREEMENT`).

How the batches reach the model depends on the task. A text classifier (sentiment, multi-label)
is the loop an OpenVINO user writes: the tokenizer on each batch, OpenVINO's ``AsyncInferQueue``,
softmax (or sigmoid) over the logits, with no transformers pipeline in the way (on SST-2 dev the
pipeline's per-text work made it 10% slower). Token classification keeps the pipeline, whose
entity grouping is the answer compared, with the OpenVINO forward inside it as optimum-intel's
OVModelFor* classes put it there, one pipeline per request on its own thread. None of nlpkit's
own work applies: the last layer computes every token, the graph is the one OpenVINO traced from
torch, and the conversion happens at load, as it does for such a user.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nlpkit.inference.onnx.runtime import FreeList
from nlpkit.inference.openvino.runtime import first_inference

CALIBRATION_INPUTS = 300  # NNCF's default subset size, and what the peer calibrated on


def compiled_for(
    hf: Any, threads: int, hint: str, calibration: Sequence[str] = (), max_length: int | None = None
) -> tuple[Any, list[str]]:
    """Pipeline ``hf``'s model converted by OpenVINO from its own weights, quantized to int8 on
    ``calibration`` texts if any are given (each cut at ``max_length`` tokens, or the model's limit), and
    compiled with performance ``hint`` ("LATENCY" or "THROUGHPUT") on ``threads``; and the names of its inputs."""
    import openvino
    import torch

    example = dict(hf.tokenizer(["a short example", "and another one"], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        converted = openvino.convert_model(hf.model, example_input=example)
    if calibration:
        converted = quantized(converted, hf.tokenizer, list(example), calibration, max_length)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint}
    compiled = openvino.Core().compile_model(converted, "CPU", config)
    first_inference(compiled)  # before any threads share it
    return compiled, list(example)


def quantized(model: Any, tokenizer: Any, names: Sequence[str], texts: Sequence[str], max_length: int | None) -> Any:
    """``model`` quantized by NNCF with the transformer preset on ``texts``, fed one at a time."""
    import nncf

    from nlpkit.inference.onnx.runtime import quiet_logger

    def feed(text: str) -> dict[str, np.ndarray]:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        return {name: encoded[name] for name in names}

    with quiet_logger("nncf"):
        return nncf.quantize(
            model,
            nncf.Dataset(list(texts), feed),
            subset_size=len(texts),
            model_type=nncf.ModelType.TRANSFORMER,
        )


def calibration_sample(texts: Sequence[str]) -> list[str]:
    """The peer's calibration inputs: ``CALIBRATION_INPUTS`` of ``texts`` drawn at random (all, if fewer)."""
    import random

    return random.Random(0).sample(list(texts), min(CALIBRATION_INPUTS, len(texts)))


def in_flight(compiled: Any) -> int:
    """How many batches OpenVINO wants in flight at once for ``compiled``'s hint."""
    return int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


def openvino_forward(hf: Any, compiled: Any, names: Sequence[str]) -> None:
    """Make pipeline ``hf``'s model run ``compiled``; the forward is safe to call from as many threads as
    batches OpenVINO wants in flight, each on an infer request of its own."""
    import torch
    from transformers.utils import ModelOutput

    requests = FreeList([compiled.create_infer_request() for _ in range(in_flight(compiled))])

    def forward(**inputs: torch.Tensor) -> ModelOutput:
        with requests.taken() as request:
            result = request.infer({name: inputs[name].numpy() for name in names}, share_outputs=False)
        return ModelOutput(logits=torch.from_numpy(result[compiled.output(0)]))

    hf.model.forward = forward  # the pipeline calls the module; the module calls this


def classify(hf: Any, queue: Any, names: Sequence[str], texts: Sequence[str], options: dict[str, Any]) -> list[Any]:
    """What text-classification pipeline ``hf`` answers for ``texts`` (already sorted by length), computed
    by the loop an OpenVINO user writes: each batch of ``options["batch_size"]`` tokenized at once and
    handed to ``queue``, an ``AsyncInferQueue`` made once with as many requests as OpenVINO wants in flight."""
    size = options["batch_size"]
    cut = {key: options[key] for key in ("truncation", "max_length") if key in options}
    logits: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, start: logits.__setitem__(start, request.get_output_tensor(0).data.copy()))
    for start in range(0, len(texts), size):
        batch = hf.tokenizer(list(texts[start : start + size]), padding=True, return_tensors="np", **cut)
        queue.start_async({name: batch[name] for name in names}, start)
    queue.wait_all()
    labels = hf.model.config.id2label
    answers = []
    for start in sorted(logits):
        for row in logits[start]:
            if options.get("function_to_apply") == "sigmoid":
                scores = 1 / (1 + np.exp(-row))
            else:
                scores = np.exp(row - row.max())
                scores /= scores.sum()
            ranked = [{"label": labels[int(i)], "score": float(scores[i])} for i in np.argsort(-scores)]
            answers.append(ranked if "top_k" in options else ranked[0])
    return answers


def by_length(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """The order of ``texts`` from the most tokens to the fewest."""
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return sorted(range(len(texts)), key=lengths.__getitem__, reverse=True)


def run_in_flight(pipelines: Sequence[Any], inputs: Sequence[Any], options: dict[str, Any]) -> list[Any]:
    """The pipelines' answers to ``inputs``, in order: their batches (``options["batch_size"]`` inputs in
    turn) dealt out to the pipelines in rotation, each pipeline on a thread of its own, so that as many
    batches are in flight as there are pipelines."""
    if len(pipelines) == 1:
        return list(pipelines[0](list(inputs), **options))
    size, count = options["batch_size"], len(pipelines)
    batches = [range(start, min(start + size, len(inputs))) for start in range(0, len(inputs), size)]
    lanes = [[index for batch in batches[lane::count] for index in batch] for lane in range(count)]

    def answer(lane: int) -> list[Any]:
        mine = [inputs[index] for index in lanes[lane]]
        return list(pipelines[lane](mine, **options)) if mine else []  # a pipeline refuses an empty list

    answers: list[Any] = [None] * len(inputs)
    with ThreadPoolExecutor(count) as pool:
        for lane, lane_answers in zip(range(count), pool.map(answer, range(count)), strict=True):
            for index, output in zip(lanes[lane], lane_answers, strict=True):
                answers[index] = output
    return answers
