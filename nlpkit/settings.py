"""Where nlpkit keeps things and how it reaches its services, and where each value came from.

A setting comes, in order of precedence, from a command-line flag, its environment
variable, the ``nlpkit.toml`` file (``$NLPKIT_CONFIG``, else ``./nlpkit.toml``), or its
default. ``nlpkit config`` shows the effective values and their sources, with secrets
masked. Kafka client settings (SASL, SSL, timeouts: any librdkafka property) pass
through from the ``[kafka]`` table of nlpkit.toml and from ``NLPKIT_KAFKA_*`` variables
(``NLPKIT_KAFKA_SASL_PASSWORD`` is ``sasl.password``) to every Kafka client nlpkit makes.

Example nlpkit.toml::

    database_url = "postgresql+psycopg://nlpkit@db.internal/nlpkit"
    bootstrap_servers = "kafka-1:9093,kafka-2:9093"

    [kafka]
    "security.protocol" = "SASL_SSL"
    "sasl.mechanism" = "SCRAM-SHA-512"
    "sasl.username" = "nlpkit"
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.errors import NlpkitError

CONFIG_ENV = "NLPKIT_CONFIG"
KAFKA_ENV_PREFIX = "NLPKIT_KAFKA_"
SCHEMA_REGISTRY_ENV_PREFIX = "NLPKIT_SCHEMA_REGISTRY_"
SECRET_WORDS = ("password", "secret", "token", "key.pem", "private", "user.info")
MASK = "***"


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
            "models_dir",
            "NLPKIT_MODELS_DIR",
            lambda: str(Path(get("home")) / "models"),
            "directory of trained models; the registry stores the locations of models inside it relative to it",
        ),
        Setting("bootstrap_servers", "NLPKIT_BOOTSTRAP_SERVERS", lambda: "127.0.0.1:9092", "Kafka bootstrap servers"),
        Setting(
            "min_agreement",
            "NLPKIT_MIN_AGREEMENT",
            lambda: "0.99",
            "least agreement with fp32 (on its calibration sample) for an int8 model to be used",
        ),
        Setting(
            "metrics_host",
            "NLPKIT_METRICS_HOST",
            lambda: "127.0.0.1",
            "address the worker's metrics and health server binds to",
        ),
        Setting(
            "metrics_token",
            "NLPKIT_METRICS_TOKEN",
            lambda: "",
            "bearer token the metrics and health server requires (none by default)",
        ),
        Setting(
            "metrics_token_file",
            "NLPKIT_METRICS_TOKEN_FILE",
            lambda: "",
            "file holding the bearer token the metrics and health server requires",
        ),
    )
}


def config_file() -> Path | None:
    """The nlpkit.toml in use: ``$NLPKIT_CONFIG`` (which must exist), else ./nlpkit.toml if present."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        if not Path(named).is_file():
            raise NlpkitError(f"{CONFIG_ENV} points at {named}, which does not exist")
        return Path(named)
    local = Path("nlpkit.toml")
    return local if local.is_file() else None


@functools.cache
def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NlpkitError(f"{path}: not valid TOML ({exc})") from exc


def file_values() -> tuple[dict[str, Any], Path | None]:
    path = config_file()
    return (_read_toml(path.resolve()), path) if path else ({}, None)


def resolve(name: str, flag: str | None = None) -> tuple[str, str]:
    """(value, source) for a setting; source is 'flag', the variable's name, the file, or 'default'."""
    setting = SETTINGS[name]
    if flag:
        return flag, "flag"
    if os.environ.get(setting.env):
        return os.environ[setting.env], setting.env
    values, path = file_values()
    if name in values:
        return str(values[name]), str(path)
    return setting.default(), "default"


def get(name: str, flag: str | None = None) -> str:
    return resolve(name, flag)[0]


def get_fraction(name: str, flag: str | None = None) -> float:
    """A setting that must be a number from 0 to 1; a bad value names where it came from."""
    value, source = resolve(name, flag)
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise NlpkitError(f"{name} from {source} must be a number from 0 to 1, got {value!r}")
    return fraction


def models_dir() -> Path:
    """Where nlpkit writes the models it trains or converts, unless told otherwise
    (``$NLPKIT_MODELS_DIR``, default ``$NLPKIT_HOME/models``)."""
    return Path(get("models_dir"))


def kafka_settings() -> dict[str, tuple[str, str]]:
    """librdkafka properties to pass through, each with its source: nlpkit.toml's [kafka] table,
    overridden by NLPKIT_KAFKA_* variables."""
    return _pass_through("kafka", KAFKA_ENV_PREFIX, "librdkafka properties")


def schema_registry_settings() -> dict[str, tuple[str, str]]:
    """Schema Registry client settings (``url``, ``basic.auth.user.info``, ``ssl.ca.location``...),
    each with its source: nlpkit.toml's [schema_registry] table, overridden by
    NLPKIT_SCHEMA_REGISTRY_* variables (NLPKIT_SCHEMA_REGISTRY_URL is ``url``)."""
    return _pass_through("schema_registry", SCHEMA_REGISTRY_ENV_PREFIX, "Schema Registry client settings")


def _pass_through(table_name: str, prefix: str, what: str) -> dict[str, tuple[str, str]]:
    values, path = file_values()
    table = values.get(table_name, {})
    if not isinstance(table, dict):
        raise NlpkitError(f"{path}: [{table_name}] must be a table of {what}")
    chosen = {str(key): (str(value), str(path)) for key, value in table.items()}
    for variable, value in os.environ.items():
        if variable.startswith(prefix) and value:
            chosen[variable[len(prefix) :].lower().replace("_", ".")] = (value, variable)
    return chosen


def is_secret(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def shown(name: str, value: str) -> str:
    """A value as it may be printed or logged: passwords and keys masked."""
    if name in ("database_url", "url"):  # a URL may carry a password
        from nlpkit.errors import redact_url

        return redact_url(value)
    return MASK if is_secret(name) else value


def effective() -> list[tuple[str, str, str]]:
    """(name, printable value, source) for every setting and Kafka pass-through property."""
    rows = [(name, shown(name, value), source) for name in SETTINGS for value, source in [resolve(name)]]
    rows += [(f"kafka: {key}", shown(key, value), source) for key, (value, source) in sorted(kafka_settings().items())]
    registry = sorted(schema_registry_settings().items())
    rows += [(f"schema registry: {key}", shown(key, value), source) for key, (value, source) in registry]
    return rows
