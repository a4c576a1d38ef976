"""What the CLI creates is never writable by group or world, even when started under umask 000.

The commands run as real processes with umask 0, the most permissive there is; then every
file and directory they left behind is checked: the database and NLPKIT_HOME, a converted
model, a trained model with its nlpkit.json, an export, a split data set.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from reviews import write_reviews

from nlpkit.testing import save_tiny_bert

SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


def shared_writable(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that group or world may write, with its mode."""
    paths = [root, *root.rglob("*")]
    return [f"{stat.filemode(p.lstat().st_mode)} {p}" for p in paths if p.lstat().st_mode & SHARED_WRITE]


def under_umask_0(command: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NLPKIT_HOME": str(home), "NLPKIT_THREADS": "1"}
    for inherited in ("NLPKIT_DATABASE_URL", "NLPKIT_CONFIG"):
        env.pop(inherited, None)
    return subprocess.run(command, umask=0, env=env, capture_output=True, text=True, timeout=600)


def nlpkit(home: Path, *arguments: str) -> None:
    result = under_umask_0([sys.executable, "-m", "nlpkit", *arguments], home)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_umask_alone_would_let_everyone_write(tmp_path):
    """The control: without nlpkit, umask 0 really does create shared-writable files and directories."""
    made = tmp_path / "made"
    result = under_umask_0(["sh", "-c", f"mkdir {made} && touch {made}/file"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert shared_writable(made) == [f"drwxrwxrwx {made}", f"-rw-rw-rw- {made / 'file'}"]


def test_nothing_the_cli_creates_is_writable_by_group_or_world(tmp_path):
    inputs, created = tmp_path / "inputs", tmp_path / "created"
    inputs.mkdir()
    bert = save_tiny_bert(inputs / "bert")
    squad = inputs / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "a", "paragraphs": []}, {"title": "b"}]}))
    home = created / "home"  # nlpkit makes it, and every directory on the way

    nlpkit(home, "db", "upgrade")
    nlpkit(home, "models", "convert", str(bert), str(created / "converted"), "--register", "tiny-base")
    nlpkit(home, "train", "sentiment", "--data", str(write_reviews(inputs / "train.jsonl", 40, seed=1)),
           "--eval-data", str(write_reviews(inputs / "dev.jsonl", 20, seed=2)), "--model", "tiny-base",
           "--name", "tiny-sentiment", "--epochs", "1", "--batch-size", "8", "--precision", "fp32",
           "--device", "cpu")  # fmt: skip
    nlpkit(home, "results", "--format", "csv", "-o", str(created / "results.csv"))
    nlpkit(home, "split-squad", str(squad), "--train-articles", "1", "--out-dir", str(created / "squad"))

    made = {p.relative_to(created).as_posix() for p in created.rglob("*")}
    expected = {"home/nlpkit.db", "converted/config.json", "converted/nlpkit.json", "home/models/tiny-sentiment",
                "home/models/tiny-sentiment/nlpkit.json", "results.csv", "squad/squad.train.json"}  # fmt: skip
    assert expected <= made, sorted(made)
    assert shared_writable(created) == []
