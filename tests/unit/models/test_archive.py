"""Models that travel: `nlpkit models export` / `import` round trips, checks and the model card."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nlpkit.cli import build_cli
from nlpkit.models.archive import MANIFEST_FILE, read_archive
from nlpkit.models.files import weights_digest, write_metadata
from nlpkit.store import migrated_database


@pytest.fixture
def nlpkit(nlpkit_home):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(build_cli(), list(args))

    return invoke


@pytest.fixture
def registered(nlpkit_home, sentiment_model_dir, tmp_path, monkeypatch):
    """A trained-looking model registered on the 'host': files in its models dir, a run with parameters."""
    host_models = tmp_path / "host-models"
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(host_models))
    model_dir = Path(shutil.copytree(sentiment_model_dir, host_models / "reviews"))
    (model_dir / "model.onnx").write_bytes(b"an exported graph, travelling with the weights")
    write_metadata(model_dir, thresholds={"positive": 0.4})
    database = migrated_database(f"sqlite:///{nlpkit_home / 'host.db'}")
    run_id = database.runs.start(
        kind="train",
        task="sentiment",
        model_name="reviews",
        base_model="minilm-distilbert",
        params={"epochs": 1, "lr": 5e-5},
    )
    database.runs.finish(run_id, "succeeded")
    database.models.register(
        name="reviews",
        task="sentiment",
        path=model_dir,
        revision=weights_digest(model_dir),
        base_model="minilm-distilbert",
        metrics={"accuracy": 0.87},
        training_run_id=run_id,
    )
    return database, model_dir


def test_export_then_import_elsewhere_registers_the_same_model_loadable_by_name(
    nlpkit, registered, tmp_path, monkeypatch
):
    host_database, model_dir = registered
    archive = tmp_path / "reviews.tar.gz"
    exported = nlpkit("--database-url", host_database.url, "models", "export", "reviews", str(archive))
    assert exported.exit_code == 0, exported.output

    # Another machine: its own models directory and database.
    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(tmp_path / "elsewhere"))
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    assert nlpkit("db", "upgrade", "--database-url", other_url).exit_code == 0
    imported = nlpkit("models", "import", str(archive), "--name", "movie-reviews", "--database-url", other_url)
    assert imported.exit_code == 0, imported.output

    entry = migrated_database(other_url).models.find("movie-reviews")
    assert entry.path == (tmp_path / "elsewhere" / "movie-reviews").resolve()
    assert (entry.task, entry.revision, entry.base_model, entry.metrics) == (
        "sentiment", weights_digest(model_dir), "minilm-distilbert", {"accuracy": 0.87}
    )  # fmt: skip
    for name in ("model.safetensors", "config.json", "tokenizer.json", "model.onnx", "nlpkit.json"):
        assert (entry.path / name).read_bytes() == (model_dir / name).read_bytes(), name
    manifest = json.loads((entry.path / MANIFEST_FILE).read_text())
    assert manifest["training_run"]["params"] == {"epochs": 1, "lr": 5e-5}
    assert manifest["model"]["labels"] == ["negative", "positive"]
    assert manifest["model"]["metadata"]["thresholds"] == {"positive": 0.4}

    predicted = nlpkit("predict", "sentiment", "a good film", "--model", "movie-reviews", "--database-url", other_url)
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["label"] in ("negative", "positive")

    again = nlpkit("models", "import", str(archive), "--name", "movie-reviews", "--database-url", other_url)
    assert again.exit_code == 0 and "already present" in again.output


def test_the_unpacked_folder_is_a_hugging_face_model_with_a_model_card(nlpkit, registered, tmp_path):
    from transformers import pipeline

    host_database, _ = registered
    archive = tmp_path / "reviews.tar.gz"
    assert nlpkit("--database-url", host_database.url, "models", "export", "reviews", str(archive)).exit_code == 0
    with tarfile.open(archive) as opened:
        opened.extractall(tmp_path / "unpacked", filter="data")
    folder = tmp_path / "unpacked" / "reviews"

    card = (folder / "README.md").read_text()
    _, front_matter, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front_matter)
    assert metadata["pipeline_tag"] == "text-classification"
    assert metadata["library_name"] == "transformers"
    assert "sentiment" in metadata["tags"]
    assert "| accuracy | 0.87 |" in body and "| epochs | `1` |" in body

    outputs = pipeline("text-classification", model=str(folder))(["a good film"])
    assert outputs[0]["label"] in ("negative", "positive")


def test_a_damaged_archive_is_refused_and_nothing_is_registered(nlpkit, registered, tmp_path, monkeypatch):
    host_database, _ = registered
    archive = tmp_path / "reviews.tar.gz"
    assert nlpkit("--database-url", host_database.url, "models", "export", "reviews", str(archive)).exit_code == 0
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(damaged, "w:gz") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith("model.safetensors"):
                data = data[:-8] + b"\0" * 8
            target.addfile(member, io.BytesIO(data))

    monkeypatch.setenv("NLPKIT_MODELS_DIR", str(tmp_path / "elsewhere"))
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    nlpkit("db", "upgrade", "--database-url", other_url)
    result = nlpkit("models", "import", str(damaged), "--database-url", other_url)
    assert result.exit_code == 1
    assert "model.safetensors is damaged" in result.output and "Traceback" not in result.output
    assert migrated_database(other_url).models.list() == []
    assert not (tmp_path / "elsewhere" / "reviews").exists()


def test_import_refuses_to_overwrite_other_weights_without_replace(nlpkit, registered, tmp_path, sentiment_model_dir):
    host_database, model_dir = registered
    archive = tmp_path / "reviews.tar.gz"
    assert nlpkit("--database-url", host_database.url, "models", "export", "reviews", str(archive)).exit_code == 0
    # The same name on the host now points at other weights.
    other = Path(shutil.copytree(sentiment_model_dir, tmp_path / "retrained"))
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\1\2\3\4")
    host_database.models.register(name="reviews", task="sentiment", path=other, revision=weights_digest(other))

    refused = nlpkit("--database-url", host_database.url, "models", "import", str(archive))
    assert refused.exit_code == 1 and "--replace" in refused.output
    replaced = nlpkit("--database-url", host_database.url, "models", "import", str(archive), "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert host_database.models.find("reviews").revision == read_archive(archive)["model"]["revision"]


def test_a_file_that_is_not_an_archive_gets_one_line(nlpkit, tmp_path):
    bogus = tmp_path / "model.tar.gz"
    bogus.write_text("not a tar")
    result = nlpkit("models", "import", str(bogus))
    assert result.exit_code == 1
    assert "not an nlpkit model archive" in result.output and len(result.output.strip().splitlines()) == 1
