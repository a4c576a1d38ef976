"""The ONNX Runtime backends: exporting a model once per weights (``export``, the one step that
needs torch), the cached files and sessions (``runtime``), and the int8 model calibrated until it
agrees with fp32 (``quantize``, with the activation outlier channels of ``outliers``). Like the
rest of inference/, never imports store, stream or cli."""
