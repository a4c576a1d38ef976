"""The layout is the architecture: checked from the source, so it cannot drift unnoticed.

- every subpackage says in its docstring what it owns;
- dependencies point one way (tasks <- models <- inference <- store / stream <- cli), with no
  import cycle, not even one made of imports inside functions or for type checking only;
- ``import nlpkit`` is the declared API, loads no torch, transformers or Kafka client, and the
  plugin guide documents every name of it;
- the built-in plugins other than the trainer, and the example third-party plugin, use only
  ``nlpkit`` and ``nlpkit.testing``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import nlpkit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "nlpkit"

# Lower layers first; a module may import from its own part or from a lower layer only.
LAYERS = [
    {"errors"},
    {"system", "settings"},
    {"tasks", "localservices"},
    {"hookspecs", "models"},
    {"plugins", "inference", "store"},
    {"pipelines", "evaluation"},
    {"stream"},
    {"testing"},
    {"pytest_plugin", "bench", "plugindocs"},
    {"cli"},
    {"__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# The plugins that must live on the public API alone (the trainer reaches into the engine's
# internals on purpose: it trains the models the rest of nlpkit serves).
PUBLIC_ONLY = [
    *(ROOT / "plugins" / name for name in ("sentiment", "multilabel", "ner", "qa")),
    ROOT / "plugins" / "text_classification.py",
    ROOT / "examples" / "nlpkit-langid",
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Every nlpkit module ``path`` imports, wherever the import statement is (a function body, an
    ``if TYPE_CHECKING`` block): ``from nlpkit.x import y`` counts as nlpkit.x.y when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name == "nlpkit" or name.startswith(("nlpkit.", "nlpkit_"))}


GRAPH = {name: {d for d in imported_modules(path) if d in MODULES} - {name} for name, path in MODULES.items()}


def part_of(name: str) -> str:
    return name.split(".")[1] if "." in name else "__init__"


def test_at_most_twelve_modules_sit_directly_in_the_package():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top


def test_every_subpackage_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(docstring.split()) >= 12, f"{init.relative_to(ROOT)} needs a docstring saying what it owns"


def test_every_part_of_the_package_has_a_layer():
    assert {part_of(name) for name in MODULES} - {"__init__"} <= set(RANK)


def test_dependencies_point_down_the_layers():
    upward = [
        f"{name} imports {dependency}"
        for name, dependencies in GRAPH.items()
        for dependency in dependencies
        if part_of(name) != "__init__"
        and part_of(dependency) != part_of(name)
        and (part_of(dependency) == "__init__" or RANK[part_of(dependency)] >= RANK[part_of(name)])
    ]
    assert upward == []


def test_no_import_cycle_not_even_inside_functions_or_for_type_checking():
    def reachable(start: str) -> set[str]:
        seen, pending = set(), [start]
        while pending:
            for dependency in GRAPH[pending.pop()]:
                if dependency not in seen:
                    seen.add(dependency)
                    pending.append(dependency)
        return seen

    # The top-level package only re-exports (some names on first use); nothing imports it back.
    cycles = sorted(name for name in GRAPH if name != "nlpkit" and name in reachable(name))
    assert cycles == []


def test_the_declared_api_loads_no_torch_transformers_or_kafka_client():
    code = (
        "import json, sys, nlpkit\n"
        "heavy = sorted({'torch', 'transformers', 'confluent_kafka'} & set(sys.modules))\n"
        "missing = [name for name in nlpkit.__all__ if not hasattr(nlpkit, name)]\n"
        "print(json.dumps([heavy, missing]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, missing = json.loads(done.stdout)
    assert heavy == [] and missing == []


def test_the_plugin_guide_documents_every_public_name():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    api = guide.split("## The public API", 1)[1].split("\n## ", 1)[0]
    import nlpkit.testing

    undocumented = [name for name in [*nlpkit.__all__, *nlpkit.testing.__all__] if f"`{name}`" not in api]
    assert undocumented == []


@pytest.mark.parametrize("root", PUBLIC_ONLY, ids=lambda path: str(path.relative_to(ROOT)))
def test_plugins_use_only_the_public_api(root: Path):
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    reached = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith("nlpkit.") and name != "nlpkit.testing"
    }
    assert files and reached == set()


def test_the_api_check_can_see_a_private_import(tmp_path: Path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from nlpkit.store import Database\n    import nlpkit.stream.worker\n")
    assert imported_modules(sneaky) == {"nlpkit.store", "nlpkit.stream.worker"}
    assert set(nlpkit.__all__) >= {"Task", "Record", "Prediction", "hookimpl", "pipeline", "NlpkitError"}
