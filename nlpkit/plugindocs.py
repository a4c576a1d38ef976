"""The hook reference in docs/plugins.md, generated from the hookspec docstrings.

The docstrings in :mod:`nlpkit.hookspecs` are the contract with plugin authors; copying
them into the guide by hand would let the two drift apart. This module renders them
(signature and docstring of each hook, reST markup turned into Markdown) and rewrites
only the part of the guide between two marker comments, so the prose around it stays
hand-written. ``tests/test_plugin_docs.py`` fails when the guide is out of date::

    python -m nlpkit.plugindocs --write docs/plugins.md   # refresh the reference
    python -m nlpkit.plugindocs                           # print it
"""

from __future__ import annotations

import argparse
import inspect
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nlpkit import hookspecs

START = "<!-- hooks:start -->"
END = "<!-- hooks:end -->"
COMMAND = "python -m nlpkit.plugindocs --write docs/plugins.md"


def hook_reference() -> str:
    """Markdown for every hook in :func:`nlpkit.hookspecs.hook_names`, in that order."""
    sections = [f"<!-- Generated from nlpkit/hookspecs.py by `{COMMAND}`; edit the docstrings, not this. -->\n"]
    for name in hookspecs.hook_names():
        spec = getattr(hookspecs, name)
        docstring = inspect.getdoc(spec)
        if not docstring:
            raise ValueError(f"hook '{name}' has no docstring; plugin authors need one (nlpkit/hookspecs.py)")
        sections.append(
            f"### `{name}`\n\n```python\n@nlpkit.hookimpl\ndef {name}{_signature(spec)}: ...\n```\n\n"
            f"{_markdown(docstring)}"
        )
    return "\n".join(sections)


def marked_section(document: str) -> str:
    """What lies between the markers of ``document`` (the generated reference)."""
    _before, section, _after = _split(document)
    return section


def replace_section(document: str, section: str) -> str:
    """``document`` with the text between its markers replaced by ``section``."""
    before, _old, after = _split(document)
    return f"{before}{START}\n{section}{END}{after}"


def write(path: Path) -> bool:
    """Refresh the reference in the file at ``path``; True when it changed."""
    document = path.read_text(encoding="utf-8")
    updated = replace_section(document, hook_reference())
    if updated == document:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def _split(document: str) -> tuple[str, str, str]:
    if document.count(START) != 1 or document.count(END) != 1 or document.index(START) > document.index(END):
        raise ValueError(f"the document needs exactly one '{START}' followed by one '{END}'")
    before, rest = document.split(START)
    section, after = rest.split(END)
    return before, section.removeprefix("\n"), after


def _signature(function: Callable[..., Any]) -> str:
    """``(name: type, ...) -> type`` as written in the source (annotations are postponed strings)."""
    signature = inspect.signature(function)
    parameters = ", ".join(
        name if parameter.annotation is inspect.Parameter.empty else f"{name}: {parameter.annotation}"
        for name, parameter in signature.parameters.items()
    )
    returns = "" if signature.return_annotation is inspect.Signature.empty else f" -> {signature.return_annotation}"
    return f"({parameters}){returns}"


def _markdown(docstring: str) -> str:
    """The reST the docstrings use, as Markdown: inline literals, roles and ``::`` literal blocks."""
    lines = docstring.splitlines()
    output: list[str] = []
    index = 0
    while index < len(lines):
        line = _inline(lines[index])
        index += 1
        if not line.endswith("::"):
            output.append(line)
            continue
        output.append(line[:-1])
        block: list[str] = []
        while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
            block.append(lines[index])
            index += 1
        code = textwrap.dedent("\n".join(block)).strip("\n")
        output.extend(["", "```python", code, "```", ""])
    return "\n".join(output).strip("\n") + "\n"


def _inline(line: str) -> str:
    line = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", line)  # :class:`nlpkit.tasks.base.Task` -> `nlpkit.tasks.base.Task`
    return re.sub(r"``([^`]+)``", r"`\1`", line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nlpkit.plugindocs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="FILE", help="refresh the reference between the markers")
    arguments = parser.parse_args(argv)
    if arguments.write is None:
        print(hook_reference(), end="")
        return
    changed = write(arguments.write)
    print(f"{arguments.write}: {'updated' if changed else 'already up to date'}")


if __name__ == "__main__":
    main()
