"""Outlier input channels split out of the int8 multiplies: the fp32 graph keeps its answers,
the right channels are chosen, and int8 lands closer to fp32 with them split out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from reviews import sentences

from nlpkit.inference.agreement import distance
from nlpkit.inference.engine import Engine
from nlpkit.inference.onnx import outliers, runtime
from nlpkit.inference.onnx.export import exported_model
from nlpkit.inference.onnx.quantize import quantize
from nlpkit.pipelines import load_task
from nlpkit.tasks.base import Record


def test_outliers_are_the_few_channels_far_above_the_median() -> None:
    maxima = np.ones(64, dtype=np.float32)
    assert outliers.outlier_channels(maxima).size == 0
    maxima[[5, 17]] = [30.0, 9.0]
    maxima[40] = outliers.OUTLIER_RATIO * 0.9  # large, but not an outlier
    assert outliers.outlier_channels(maxima).tolist() == [5, 17]
    maxima[: 2 * outliers.MAX_OUTLIERS] = 50.0 + np.arange(2 * outliers.MAX_OUTLIERS)
    assert outliers.outlier_channels(maxima).size == outliers.MAX_OUTLIERS


@pytest.fixture
def fp32_graph(tmp_path: Path, sentiment_model_dir: Path) -> Path:
    copy = Path(shutil.copytree(sentiment_model_dir, tmp_path / "model"))
    return exported_model(load_task("sentiment", str(copy)).model).path


def _feeds() -> dict[str, np.ndarray]:
    ids = np.array([[2, 40, 41, 42, 3, 0, 0], [2, 50, 51, 52, 53, 54, 3]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def test_the_probe_answers_like_the_model_and_measures_every_multiplied_input(fp32_graph: Path, tmp_path: Path) -> None:
    plain = runtime.open_session(fp32_graph, 1)
    probed = outliers.probed_inputs(fp32_graph, tmp_path / "probe.onnx")
    probe = outliers.ChannelMaxima(runtime.open_session(tmp_path / "probe.onnx", 1), probed)
    names = [output.name for output in plain.get_outputs()]
    assert [output.name for output in probe.get_outputs()] == names
    expected = plain.run(names, _feeds())
    assert all(np.array_equal(a, b) for a, b in zip(probe.run(names, _feeds()), expected, strict=True))
    assert len(probed) >= 4 and set(probe.maxima) == set(probed)  # the tiny model: 2 layers, 2 FFN inputs each
    assert all(m.ndim == 1 and (m > 0).all() for m in probe.maxima.values())


def test_splitting_channels_out_keeps_the_fp32_results(fp32_graph: Path, tmp_path: Path) -> None:
    probed = outliers.probed_inputs(fp32_graph, tmp_path / "probe.onnx")
    probe = outliers.ChannelMaxima(runtime.open_session(tmp_path / "probe.onnx", 1), probed)
    probe.run([output.name for output in probe.get_outputs()], _feeds())
    planted = {name: np.ones_like(m) for name, m in probe.maxima.items()}
    for maxima in planted.values():
        maxima[[1, 7]] = 100.0  # two outlier channels in every tensor
    split = outliers.split_outliers(fp32_graph, planted, tmp_path / "split.onnx")
    assert split == 2 * len(planted)  # once per tensor, however many multiplies read it
    before, after = (runtime.open_session(file, 1) for file in (fp32_graph, tmp_path / "split.onnx"))
    names = [output.name for output in before.get_outputs()]
    for a, b in zip(before.run(names, _feeds()), after.run(names, _feeds()), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_int8_lands_closer_to_fp32_with_an_outlier_channel_split_out(
    sentiment_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny model gets what real ones have: one FFN input channel 100 times the rest."""
    records = [Record({"text": text}) for text in sentences(64, seed=4)]

    def int8_distance(directory: Path) -> float:
        shutil.copytree(sentiment_model_dir, directory)
        model = transformers.DistilBertForSequenceClassification.from_pretrained(directory)
        with torch.no_grad():
            model.distilbert.transformer.layer[0].sa_layer_norm.weight[3] *= 100
        model.save_pretrained(directory)
        fp32 = load_task("sentiment", str(directory))
        report = quantize(fp32, records, min_agreement=0.5, data="test")
        int8 = load_task("sentiment", str(directory), backend="int8")
        scores = [[p.output for p in Engine(task).predict(records)] for task in (fp32, int8)]
        return report.outlier_channels, distance(*scores)

    split, with_split = int8_distance(tmp_path / "split")
    monkeypatch.setattr(outliers, "MAX_OUTLIERS", 0)
    none, without = int8_distance(tmp_path / "plain")
    assert split >= 1 and none == 0
    # About half the error on CPUs without VNNI (7-bit weights there leave more weight error that
    # no split removes), under half with VNNI: either way clear of this bound.
    assert with_split < 0.7 * without
