"""What only the OpenVINO backends do: compute in the precision they record (bf16 only where OpenVINO does),
on the configured threads, and hand back outputs that the next batch cannot overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino
import pytest

from nlpkit.errors import NlpkitError
from nlpkit.inference import backends
from nlpkit.inference.loading import load_model
from nlpkit.inference.openvino import runtime
from nlpkit.pipelines import load_task
from nlpkit.system.threads import configure_threads

HEAD = "DistilBertForSequenceClassification"


def test_openvino_bf16_is_neither_offered_nor_loaded_without_bf16_units(
    sentiment_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "has_bf16", lambda: False)
    assert "openvino-bf16" not in backends.backends_here()
    assert {"openvino", "openvino-int8", "bf16"} <= set(backends.backends_here())  # torch's bf16 runs, emulated
    with pytest.raises(NlpkitError, match="needs a CPU with bf16 units"):
        load_task("sentiment", str(sentiment_copy), backend="openvino-bf16")
    monkeypatch.setattr(backends, "has_bf16", lambda: True)
    assert "openvino-bf16" in backends.backends_here()


def test_a_session_computes_in_the_precision_it_was_asked_for_or_refuses(sentiment_copy: Path) -> None:
    """Left alone OpenVINO picks bf16 on CPUs that have it, and asked for bf16 on one that has none it
    quietly computes in fp32: either way a prediction would record a precision it never used."""
    loaded = load_model(str(sentiment_copy), HEAD, backend="openvino")
    assert loaded.session.precision == "fp32"
    graph = sentiment_copy / "openvino" / runtime.FP32_FILE
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert runtime.open_session(graph, 1, "bf16").precision == "bf16"
    else:
        with pytest.raises(NlpkitError, match="OpenVINO computes in fp32 on this CPU, not bf16"):
            runtime.open_session(graph, 1, "bf16")


def test_a_session_runs_on_the_configured_threads_one_stream_per_parallel_batch(
    sentiment_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        configure_threads(1)
        compiled = load_model(str(sentiment_copy), HEAD, backend="openvino").session.compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert compiled.get_property("NUM_STREAMS") == 1
        configure_threads(2)
        loaded = load_model(str(sentiment_copy), HEAD, backend="openvino")
        assert loaded.session.compiled.get_property("INFERENCE_NUM_THREADS") == 2
        assert loaded.session.compiled.get_property("NUM_STREAMS") == 2 == loaded.parallel_batches
        monkeypatch.setenv("NLPKIT_PARALLEL_BATCHES", "1")  # one batch at a time on both threads: lowest latency
        loaded = load_model(str(sentiment_copy), HEAD, backend="openvino")
        assert loaded.session.compiled.get_property("NUM_STREAMS") == 1 == loaded.parallel_batches
        assert loaded.session.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    finally:
        configure_threads()


def test_outputs_outlive_the_next_batch(sentiment_copy: Path) -> None:
    """The engine keeps every batch's outputs until the last one is run; a request reuses its buffers."""
    loaded = load_model(str(sentiment_copy), HEAD, backend="openvino")
    first_ids = np.array([[2, 40, 41, 42, 3], [2, 43, 44, 3, 0]], dtype=np.int64)
    first = loaded.forward(first_ids, (first_ids > 0).astype(np.int64))["logits"]
    kept = first.copy()
    second_ids = np.array([[2, 50, 51, 52, 3], [2, 53, 54, 55, 3]], dtype=np.int64)
    second = loaded.forward(second_ids, np.ones_like(second_ids))["logits"]
    assert not np.allclose(second, kept)  # different inputs, different logits...
    np.testing.assert_array_equal(first, kept)  # ...and the first batch's are still its own


def test_an_int8_model_computes_its_float_parts_as_its_agreement_was_measured(
    sentiment_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 where the CPU has bf16 units (OpenVINO's own default there, and faster), recorded with the file;
    a file measured in fp32, or moved to a CPU without bf16 units, computes them in fp32."""
    from reviews import sentences

    from nlpkit.inference.openvino import quantize
    from nlpkit.system.hardware import has_bf16
    from nlpkit.tasks.base import Record

    task = load_task("sentiment", str(sentiment_copy))
    quantize.quantize(task, [Record({"text": t}) for t in sentences(32, seed=2)], min_agreement=0.5, data="test")
    report = runtime.read_report(sentiment_copy / "openvino", runtime.INT8_REPORT, task.model.revision)
    here = "bf16" if has_bf16() else "fp32"
    assert report["float_precision"] == here == runtime.int8_float_precision(report)
    monkeypatch.setenv("NLPKIT_MIN_AGREEMENT", "0.5")
    assert load_task("sentiment", str(sentiment_copy), backend="openvino-int8").model.session.precision == here
    assert runtime.int8_float_precision({"agreement": 0.995}) == "fp32"  # made before the field was written
    monkeypatch.setattr(runtime, "has_bf16", lambda: False)
    assert runtime.int8_float_precision({"float_precision": "bf16"}) == "fp32"
    assert runtime.int8_float_precision() == "fp32"
