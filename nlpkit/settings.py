"""Where nlpkit keeps things and how it finds its services.

Each setting comes from a command-line flag when one is given, else from its
environment variable, else from a default; :func:`resolve` also says which, so
``nlpkit`` can explain where a value came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _default_home() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "nlpkit")


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: Callable[[], str]
    help: str


SETTINGS = {
    setting.name: setting
    for setting in (
        Setting("home", "NLPKIT_HOME", _default_home, "directory for the default database and trained models"),
        Setting(
            "database_url",
            "NLPKIT_DATABASE_URL",
            lambda: f"sqlite:///{Path(get('home')) / 'nlpkit.db'}",
            "SQLAlchemy URL of the database (SQLite file by default)",
        ),
        Setting(
            "bootstrap_servers",
            "NLPKIT_BOOTSTRAP_SERVERS",
            lambda: "127.0.0.1:9092",
            "Kafka bootstrap servers",
        ),
    )
}


def resolve(name: str, flag: str | None = None) -> tuple[str, str]:
    """(value, source) for a setting, source being 'flag', the variable's name, or 'default'."""
    setting = SETTINGS[name]
    if flag:
        return flag, "flag"
    if os.environ.get(setting.env):
        return os.environ[setting.env], setting.env
    return setting.default(), "default"


def get(name: str, flag: str | None = None) -> str:
    return resolve(name, flag)[0]


def models_dir() -> Path:
    """Where nlpkit writes the models it trains or converts, unless told otherwise."""
    return Path(get("home")) / "models"
