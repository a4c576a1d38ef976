"""The best peer on the same machine: OpenVINO, run the way its users run a transformers model.

A peer user converts the transformers weights with ``openvino.convert_model``, compiles them
for the CPU on the same threads with the latency hint (what optimum-intel's OVModel classes set
by default) and otherwise OpenVINO's defaults, so it computes in bf16 where the CPU has bf16
units, and puts that forward inside the transformers pipeline, which is what optimum-intel's
OVModelFor* classes do. The texts go in sorted by length, 32 to a batch, each batch padded to
its own longest (the pipeline's collation): what a user who knows CPU batching does. None of
nlpkit's own work applies: the last layer computes every token, the graph is the one OpenVINO
traced from torch, and the conversion happens at load, as it does for such a user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nlpkit.inference.openvino.runtime import compiled_precision


def openvino_forward(hf: Any, threads: int) -> str:
    """Make pipeline ``hf``'s model run in OpenVINO, converted from its own weights; returns the
    precision OpenVINO chose to compute in ("fp32", "bf16"), for the bench to record."""
    import openvino
    import torch
    from transformers.utils import ModelOutput

    example = dict(hf.tokenizer(["a short example", "and another one"], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        converted = openvino.convert_model(hf.model, example_input=example)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = openvino.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()
    names = list(example)

    def forward(**inputs: torch.Tensor) -> ModelOutput:
        result = request.infer({name: inputs[name].numpy() for name in names}, share_outputs=False)
        return ModelOutput(logits=torch.from_numpy(result[compiled.output(0)]))

    hf.model.forward = forward  # the pipeline calls the module; the module calls this
    return compiled_precision(compiled)


def by_length(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """The order of ``texts`` from the most tokens to the fewest."""
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    return sorted(range(len(texts)), key=lengths.__getitem__, reverse=True)
