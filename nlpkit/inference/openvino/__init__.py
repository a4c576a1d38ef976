"""The OpenVINO backends (``openvino``, ``openvino-bf16``, ``openvino-int8``): the fp32 model converted
from the ONNX export (``convert``), the cached files and sessions that run them without torch
(``runtime``), and the int8 model quantized by NNCF and checked against fp32 (``quantize``). Made
from the ONNX export, they share its cache conventions and its int8 gate
(:mod:`nlpkit.inference.onnx.runtime`). Like the rest of inference/, never imports store, stream or cli."""
