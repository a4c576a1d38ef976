"""The langid task through nlpkit's real worker logic (no broker), its model and its commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nlpkit import read_metadata
from nlpkit.testing import run_through_worker

from nlpkit_langid import LanguageIdTask
from nlpkit_langid.build import build_model
from nlpkit_langid.corpus import SENTENCES


def nlpkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nlpkit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NLPKIT_THREADS": "1"},
    )


def test_the_installed_distribution_registers_the_task_and_its_commands():
    listed = json.loads(nlpkit("plugins", "--json").stdout)
    info = next(info for info in listed if info["name"] == "langid")
    assert (info["distribution"], info["hooks"]) == ("nlpkit-langid", ["register_commands", "register_tasks"])
    shown = " ".join(nlpkit("predict", "langid", "--help").stdout.split())  # click wraps the help text
    assert f"Predict {LanguageIdTask.description}" in shown


def test_every_message_is_stored_with_its_language(langid_model, unseen):
    messages = [{"id": f"{language}-{number}", "text": text} for number, (language, text) in enumerate(unseen)]
    run = run_through_worker("langid", langid_model, messages, device="cpu")

    assert run.dead_letters == []
    assert [row["record_id"] for row in run.predictions] == [message["id"] for message in messages]
    assert [row["output"]["language"] for row in run.predictions] == [language for language, _text in unseen]
    for row, (_language, text) in zip(run.predictions, unseen, strict=True):
        output = row["output"]
        assert (row["task"], row["input_text"], row["label"], row["score"]) == (
            "langid",
            text,
            output["language"],
            output["score"],
        )
        assert set(output["scores"]) == set(SENTENCES)
        assert abs(sum(output["scores"].values()) - 1) < 1e-5
        assert output["score"] == max(output["scores"].values())


def test_bad_messages_become_dead_letters_and_the_rest_of_the_batch_is_stored(langid_model):
    messages = [
        ("plain-key", "Der Zug fährt um acht Uhr ab."),  # plain text: the key becomes the record id
        b"\xff\xfe not utf-8",
        {"id": "blank", "text": "   "},
        {"id": "number", "text": 42},
        {"id": "fr", "text": "Le train part à huit heures."},
    ]
    run = run_through_worker("langid", langid_model, messages, device="cpu")

    assert [(row["record_id"], row["source_offset"]) for row in run.predictions] == [("plain-key", 0), ("fr", 4)]
    assert [(row["source_offset"], row["stage"]) for row in run.dead_letters] == [
        (1, "decode"),
        (2, "validate"),
        (3, "validate"),
    ]
    assert "not valid UTF-8" in run.dead_letters[0]["reason"]
    assert run.dead_letters[0]["raw_value"] == b"\xff\xfe not utf-8"
    assert run.dead_letters[1]["reason"] == "field 'text' is empty"


def test_the_model_learns_the_languages_from_the_built_in_corpus(langid_model):
    metadata = read_metadata(langid_model)
    assert metadata["task"] == "langid"
    # Chance is 0.25; every sixth sentence of each language is held out of training.
    assert metadata["held_out_accuracy"] >= 0.85


def test_the_same_seed_builds_the_same_model(tmp_path):
    first = build_model(tmp_path / "first", epochs=2, seed=7)
    second = build_model(tmp_path / "second", epochs=2, seed=7)
    assert read_metadata(first.path)["revision"] == read_metadata(second.path)["revision"]


def test_build_register_and_predict_from_the_command_line(tmp_path, nlpkit_database):
    url = nlpkit_database.url
    built = nlpkit(
        "--database-url", url, "langid", "build-model", str(tmp_path / "model"), "--epochs", "3", "--register", "mini"
    )
    assert built.returncode == 0, built.stderr
    assert "saved a model for de, en, es, fr" in built.stderr and "registered it as 'mini'" in built.stderr
    assert nlpkit_database.models.find("mini").task == "langid"

    # No --model: the newest model registered for the task, the one just built.
    predicted = nlpkit("--database-url", url, "predict", "langid", "Hola a todos", "Hello everyone")
    assert predicted.returncode == 0, predicted.stderr
    outputs = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(outputs) == 2 and all(set(output) == {"language", "score", "scores"} for output in outputs)
