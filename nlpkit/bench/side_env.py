"""Side environments with another transformers release, borrowing this environment's torch.

transformers 5 removed the extractive question-answering pipeline, yet nlpkit's ``qa``
task is checked (scripts/qa_reference.py) and timed (benchmarks/qa_pipeline.py) against
it. Those scripts run transformers 4.57 in a virtual environment of its own. Installing
torch there again would cost gigabytes and minutes, so the side environment borrows it:
a .pth file appends this environment's site-packages to the side environment's path,
after its own packages, so its own transformers wins and torch comes from here.

Only the standard library is imported, so nothing here pulls in transformers 5.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from nlpkit.system.cache import cache_dir

LEGACY_TRANSFORMERS = "transformers==4.57.6"
READY_MARKER = "nlpkit-ready"  # written last: an environment without it was interrupted mid-build


def make_environment(path: Path, requirement: str = LEGACY_TRANSFORMERS) -> str:
    """Create a venv at ``path`` with ``requirement`` that sees this environment's torch; returns its python."""
    venv.create(path, with_pip=True)
    python = str(path / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement], check=True)
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    Path(own_site, "borrowed-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def cached_environment(requirement: str = LEGACY_TRANSFORMERS, root: Path | None = None) -> str:
    """The python of a side environment kept under ``~/.cache/nlpkit/envs``, built on first use only.

    The directory name carries the requirement, the Python version and a hash of the
    site-packages it borrows from, so another interpreter or checkout gets its own
    environment instead of one whose .pth points elsewhere. A lock keeps two runs that
    start together from building into the same directory.
    """
    root = root or cache_dir() / "envs"
    borrowed = sysconfig.get_paths()["purelib"]
    tag = hashlib.sha256(borrowed.encode()).hexdigest()[:8]
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    path = root / f"{requirement.replace('==', '-')}-{version}-{tag}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / READY_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
            make_environment(path, requirement)
            (path / READY_MARKER).write_text(requirement + "\n")
    return str(path / "bin" / "python")
