"""The collector runs less often in nlpkit's own processes, and only there."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from nlpkit.system.collector import YOUNG_COLLECTION_THRESHOLD, collect_less_often


@pytest.fixture
def thresholds_restored():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_only_the_young_threshold_is_raised(thresholds_restored):
    collect_less_often()
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds_restored[1:])


def first_threshold_after(code: str) -> int:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return int(done.stdout.split()[-1])


def test_the_nlpkit_command_raises_it_and_importing_nlpkit_does_not():
    """A library import leaves its host's collector alone; the console script's process is nlpkit's own."""
    python_default = first_threshold_after("import gc\nprint(gc.get_threshold()[0])")
    imported = first_threshold_after("import gc, nlpkit.cli, nlpkit.inference\nprint(gc.get_threshold()[0])")
    command = first_threshold_after(
        "import gc, sys\nfrom nlpkit.cli import main\nsys.argv = ['nlpkit', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint(gc.get_threshold()[0])"
    )
    assert imported == python_default != YOUNG_COLLECTION_THRESHOLD
    assert command == YOUNG_COLLECTION_THRESHOLD
