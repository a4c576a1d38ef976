"""The plugin author's guide covers every hook, and its generated hook reference is current."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nlpkit import hookspecs, plugindocs

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def test_every_hook_has_a_docstring_for_plugin_authors():
    for name in hookspecs.hook_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.split()) > 20, f"hook {name} needs a real docstring"
    assert hookspecs.hook_names() == ["predictions_stored", "register_commands", "register_tasks"]


def test_every_hook_and_argument_is_in_the_guide():
    guide = GUIDE.read_text(encoding="utf-8")
    for name in hookspecs.hook_names():
        heading = f"### `{name}`"
        assert heading in guide, f"docs/plugins.md does not document hook {name}"
        section = guide[guide.index(heading) :].split("\n### ")[0]
        signature = next((line for line in section.splitlines() if line.startswith(f"def {name}(")), "")
        for argument in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f"{argument}:" in signature, f"docs/plugins.md does not show {name}'s argument {argument}"


def test_the_hook_reference_in_the_guide_is_generated_from_the_current_hookspecs():
    section = plugindocs.marked_section(GUIDE.read_text(encoding="utf-8"))
    assert section == plugindocs.hook_reference(), f"docs/plugins.md is out of date: run `{plugindocs.COMMAND}`"


def test_a_hook_without_a_docstring_stops_the_reference(monkeypatch):
    @hookspecs.hookspec
    def undocumented_hook(thing):
        pass

    monkeypatch.setattr(hookspecs, "undocumented_hook", undocumented_hook, raising=False)
    assert "undocumented_hook" in hookspecs.hook_names()
    with pytest.raises(ValueError, match="hook 'undocumented_hook' has no docstring"):
        plugindocs.hook_reference()


def test_reference_markup_becomes_markdown():
    reference = plugindocs.hook_reference()
    assert "def register_tasks(register: Callable[[type[Task]], None]) -> None: ..." in reference
    assert "for each `nlpkit.Task` subclass" in reference  # :class:`...` role
    assert "Call `register(TaskClass)`" in reference  # ``...`` literal
    assert "Example:\n\n```python\n@nlpkit.hookimpl\ndef register_tasks(register):\n    register(" in reference
    assert "::" not in reference and ":class:" not in reference and "``" not in reference.replace("```", "")


def test_writing_replaces_only_the_marked_section(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text(f"# Guide\n\nHand-written.\n\n{plugindocs.START}\nstale\n{plugindocs.END}\n\nMore prose.\n")

    assert plugindocs.write(guide) is True
    text = guide.read_text()
    assert text.startswith("# Guide\n\nHand-written.\n\n") and text.endswith(f"{plugindocs.END}\n\nMore prose.\n")
    assert plugindocs.marked_section(text) == plugindocs.hook_reference()
    assert plugindocs.write(guide) is False  # already current: the file is left alone


def test_the_command_line_writes_the_file(tmp_path, capsys):
    guide = tmp_path / "guide.md"
    guide.write_text(f"{plugindocs.START}\n{plugindocs.END}\n")
    plugindocs.main(["--write", str(guide)])
    assert capsys.readouterr().out == f"{guide}: updated\n"
    assert plugindocs.marked_section(guide.read_text()) == plugindocs.hook_reference()


@pytest.mark.parametrize(
    "document",
    ["no markers at all", f"{plugindocs.END}\n{plugindocs.START}\n", f"{plugindocs.START}\n{plugindocs.START}\n"],
)
def test_a_document_without_one_pair_of_markers_is_refused(document):
    with pytest.raises(ValueError, match="needs exactly one"):
        plugindocs.replace_section(document, "anything")
