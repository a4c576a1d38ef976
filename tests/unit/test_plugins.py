"""Plugin loading: built-ins through entry points, the allow-list variable, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from nlpkit.errors import UnknownTaskError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nlpkit-langid"


def make_distribution(root: Path, name: str, module_source: str) -> None:
    """An installed-looking distribution (dist-info + module) that exposes one nlpkit plugin."""
    module = name.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{module}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[nlpkit]\n{module} = {module}\n")


def run_nlpkit(*args: str, pythonpath: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    if pythonpath is not None:
        environment["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", "from nlpkit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_builtins_are_listed_with_version_and_hooks():
    result = run_nlpkit("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["sentiment"]["distribution"] == "nlpkit"
    assert plugins["sentiment"]["hooks"] == ["register_tasks"]
    assert plugins["trainer"]["hooks"] == ["register_commands"]
    assert plugins["sentiment"]["version"]


def test_the_environment_variable_restricts_which_plugins_load():
    only = run_nlpkit("plugins", "--json", NLPKIT_LOAD_PLUGINS="sentiment")
    assert [p["name"] for p in json.loads(only.stdout)] == ["sentiment"]
    none = run_nlpkit("plugins", "--json", NLPKIT_LOAD_PLUGINS="")
    assert json.loads(none.stdout) == []
    # The trainer is a plugin like any other: without it there is no `train` command.
    assert run_nlpkit("train", "--help", NLPKIT_LOAD_PLUGINS="sentiment").returncode != 0


def test_the_example_plugin_that_setup_installs_is_listed_with_its_version():
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    plugins = {p["name"]: p for p in json.loads(run_nlpkit("plugins", "--json").stdout)}
    assert "langid" in plugins, f"{EXAMPLE} is not installed: run scripts/setup.sh (or pip install -e {EXAMPLE})"
    assert plugins["langid"] == {
        "name": "langid",
        "distribution": declared["name"],
        "version": declared["version"],
        "hooks": ["register_commands", "register_tasks"],
    }


def test_a_third_party_plugin_adds_a_task_through_the_same_entry_point_group(tmp_path):
    make_distribution(
        tmp_path,
        "nlpkit-echo",
        """
        from nlpkit import hookimpl
        from nlpkit_plugins.sentiment import SentimentTask

        class EchoTask(SentimentTask):
            name = "echo"
            description = "a test task"

        @hookimpl
        def register_tasks(register):
            register(EchoTask)
    """,
    )
    result = run_nlpkit("plugins", "--json", pythonpath=tmp_path)
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["nlpkit_echo"] == {
        "name": "nlpkit_echo",
        "distribution": "nlpkit-echo",
        "version": "1.2.3",
        "hooks": ["register_tasks"],
    }
    assert "echo" in run_nlpkit("predict", "--help", pythonpath=tmp_path).stdout


def test_a_plugin_that_fails_to_import_gives_one_line_naming_it(tmp_path):
    make_distribution(tmp_path, "nlpkit-broken", "import a_module_that_does_not_exist\n")
    result = run_nlpkit("plugins", pythonpath=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "plugin 'nlpkit_broken' (nlpkit-broken 1.2.3) failed to import" in lines[0]
    assert "a_module_that_does_not_exist" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_plugin_with_a_misspelled_hook_is_rejected(tmp_path):
    make_distribution(
        tmp_path,
        "nlpkit-typo",
        """
        from nlpkit import hookimpl

        @hookimpl
        def register_taks(register):
            pass
    """,
    )
    result = run_nlpkit("plugins", pythonpath=tmp_path)
    assert result.returncode == 1
    assert "plugin 'nlpkit_typo' (nlpkit-typo 1.2.3) is invalid" in result.stderr


def test_unknown_task_lists_the_known_ones(fresh_plugins, monkeypatch):
    monkeypatch.setenv("NLPKIT_LOAD_PLUGINS", "nlpkit")  # the built-ins only, whatever else is installed
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'; known tasks: multilabel, ner, qa, sentiment"):
        fresh_plugins.get_task_class("nope")
