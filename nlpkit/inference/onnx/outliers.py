"""Activation outlier channels, taken out of the int8 matrix multiplies and done in fp32.

A few hidden channels of a transformer carry values far larger than the rest: on the
6-layer MiniLM the inputs of the feed-forward layers reach 12-14 times the median
channel's largest value. Dynamic int8 gives a whole input tensor one scale per batch,
so those few channels set it and every ordinary channel is left with a handful of
levels. That, not the weights, is what flips answers (SST-2 dev: 98.3% agreement with
every layer int8). LLM.int8() (Dettmers et al., 2022) splits the product instead:

    X @ W  =  (X * keep) @ W  +  X[..., outliers] @ W[outliers, :]

``keep`` zeroes the outlier channels, so the int8 product's scale fits the ordinary
ones, and the outlier part, a handful of the K input channels, runs in fp32 at little
cost. On SST-2 dev that lifts agreement to 99.7% with every layer int8, where keeping
whole layers in fp32 needed four feed-forward matrices (a third slower) for 99.9%.

Which channels are outliers is measured on the calibration sample, per input tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

OUTLIER_NODE_PREFIX = "nlpkit_outliers/"  # the fp32 side products: never quantized
OUTLIER_RATIO = 4.0  # a channel whose largest value exceeds this many times the median channel's
MAX_OUTLIERS = 8  # per tensor: beyond a few channels the fp32 side product stops being cheap


def probed_inputs(fp32_file: Path, destination: Path) -> list[str]:
    """Write a copy of the graph that also outputs the input of every weight matrix multiply;
    return those inputs' names (the extra outputs, in order after the model's own)."""
    import onnx

    model = onnx.load(str(fp32_file))
    names = list(dict.fromkeys(node.input[0] for node in _weight_matmuls(model.graph)))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(destination))
    return names


class ChannelMaxima:
    """Wraps a session of the :func:`probed_inputs` graph so that it answers exactly like the
    model's own, while it keeps the largest absolute value seen on each channel of the probed
    tensors. Run the task on it as on any ONNX session."""

    def __init__(self, session: Any, probed: Sequence[str]) -> None:
        self.session = session
        self.probed = list(probed)
        self._outputs = session.get_outputs()[: len(session.get_outputs()) - len(self.probed)]
        self.maxima: dict[str, np.ndarray] = {}

    def get_outputs(self) -> list[Any]:
        return self._outputs

    def run(self, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = self.session.run([*names, *self.probed], feeds)
        for name, value in zip(self.probed, values[len(names) :], strict=True):
            largest = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            seen = self.maxima.get(name)
            self.maxima[name] = largest if seen is None else np.maximum(seen, largest)
        return values[: len(names)]


def outlier_channels(maxima: np.ndarray) -> np.ndarray:
    """The channels, largest first, whose maximum exceeds OUTLIER_RATIO times the median channel's."""
    threshold = OUTLIER_RATIO * float(np.median(maxima))
    ranked = np.argsort(-maxima)[:MAX_OUTLIERS]
    return ranked[maxima[ranked] > threshold].astype(np.int64)


def split_outliers(fp32_file: Path, maxima: dict[str, np.ndarray], destination: Path) -> int:
    """Write the graph with each weight multiply's outlier input channels split out to fp32;
    return how many channels were split in all."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_file))
    graph = model.graph
    weights = {initializer.name: initializer for initializer in graph.initializer}
    split = 0
    nodes = []
    separated: dict[str, tuple[str, str]] = {}  # input tensor -> its ordinary channels, its outlier channels
    for node in graph.node:
        seen = maxima.get(node.input[0]) if _is_weight_matmul(node, weights) else None
        channels = outlier_channels(seen) if seen is not None else None
        if channels is None or not channels.size:
            nodes.append(node)
            continue
        source = node.input[0]
        if source not in separated:  # once per tensor, however many multiplies read it (q, k and v do)
            split += channels.size
            keep = np.ones(seen.size, dtype=np.float32)
            keep[channels] = 0.0
            at = f"{OUTLIER_NODE_PREFIX}{source}"
            graph.initializer.extend(
                [numpy_helper.from_array(keep, f"{at}/keep"), numpy_helper.from_array(channels, f"{at}/channels")]
            )
            separated[source] = (f"{at}/ordinary", f"{at}/outliers")
            nodes += [
                helper.make_node("Mul", [source, f"{at}/keep"], [f"{at}/ordinary"], name=f"{at}/zero"),
                helper.make_node("Gather", [source, f"{at}/channels"], [f"{at}/outliers"], axis=-1, name=f"{at}/take"),
            ]
        ordinary, outliers = separated[source]
        at, result = f"{OUTLIER_NODE_PREFIX}{node.name}", node.output[0]
        weight = numpy_helper.to_array(weights[node.input[1]])
        graph.initializer.append(numpy_helper.from_array(weight[channels].astype(np.float32), f"{at}/weight"))
        node.input[0], node.output[0] = ordinary, f"{at}/ordinary_product"
        nodes += [
            node,  # the int8 product of the ordinary channels
            helper.make_node("MatMul", [outliers, f"{at}/weight"], [f"{at}/product"], name=f"{at}/fp32"),
            helper.make_node("Add", [node.output[0], f"{at}/product"], [result], name=f"{at}/sum"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(destination))
    return split


def is_outlier_node(name: str) -> bool:
    return name.startswith(OUTLIER_NODE_PREFIX)


def _weight_matmuls(graph: Any) -> list[Any]:
    weights = {initializer.name: initializer for initializer in graph.initializer}
    return [node for node in graph.node if _is_weight_matmul(node, weights)]


def _is_weight_matmul(node: Any, weights: dict[str, Any]) -> bool:
    """A MatMul of a computed tensor by a 2-D weight: the kind dynamic int8 quantizes."""
    return (
        node.op_type == "MatMul"
        and node.input[1] in weights
        and node.input[0] not in weights
        and len(weights[node.input[1]].dims) == 2
    )
