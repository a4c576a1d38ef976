"""The plugin manager: built-in and third-party plugins, loaded the same way.

Every plugin, built-in or not, is an entry point in the ``nlpkit`` group. Setting
``NLPKIT_LOAD_PLUGINS`` to a comma-separated list of plugin (entry-point) or
distribution names loads only those; an empty value loads none. That is how an
operator disables a plugin, and how a plugin author tests theirs in isolation.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from nlpkit import hookspecs
from nlpkit.errors import PluginLoadError, UnknownTaskError

ENTRY_POINT_GROUP = "nlpkit"
LOAD_PLUGINS_ENV = "NLPKIT_LOAD_PLUGINS"

pm = pluggy.PluginManager("nlpkit")
pm.add_hookspecs(hookspecs)

_loaded = False
_tasks: dict[str, type] | None = None


@dataclass(frozen=True)
class PluginInfo:
    """What ``nlpkit plugins`` shows about one loaded plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": list(self.hooks),
        }


def load_plugins() -> pluggy.PluginManager:
    """Import and register every allowed plugin once; later calls return the same manager."""
    global _loaded
    if _loaded:
        return pm
    allowed = _allowed_names()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.has_plugin(entry_point.name):
            continue
        distribution = entry_point.dist.name if entry_point.dist else None
        if allowed is not None and not allowed & {entry_point.name, distribution}:
            continue
        _register_entry_point(entry_point)
    _loaded = True
    return pm


def _allowed_names() -> set[str] | None:
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _register_entry_point(entry_point: importlib.metadata.EntryPoint) -> None:
    label = _describe(entry_point)
    hint = f"uninstall it, or leave it out with {LOAD_PLUGINS_ENV}"
    try:
        plugin = entry_point.load()
    except Exception as exc:  # a plugin's import can fail in any way; name it and stop
        raise PluginLoadError(f"plugin {label} failed to import: {type(exc).__name__}: {exc} ({hint})") from exc
    try:
        pm.register(plugin, name=entry_point.name)
        pm.check_pending()
    except (ValueError, pluggy.PluginValidationError) as exc:
        pm.unregister(name=entry_point.name)
        raise PluginLoadError(f"plugin {label} is invalid: {exc} ({hint})") from exc


def _describe(entry_point: importlib.metadata.EntryPoint) -> str:
    if entry_point.dist is None:
        return f"'{entry_point.name}'"
    return f"'{entry_point.name}' ({entry_point.dist.name} {entry_point.dist.version})"


def plugin_infos() -> list[PluginInfo]:
    """Every loaded plugin with its distribution, version and the hooks it implements."""
    load_plugins()
    distributions = {
        entry_point.name: entry_point.dist for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    }
    infos = []
    for name, plugin in pm.list_name_plugin():
        dist = distributions.get(name)
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        infos.append(PluginInfo(name, dist.name if dist else None, dist.version if dist else None, hooks))
    return sorted(infos, key=lambda info: info.name)


def task_classes() -> dict[str, type]:
    """Name -> Task class, as registered by the loaded plugins' ``register_tasks`` hooks."""
    global _tasks
    if _tasks is None:
        found: dict[str, type] = {}

        def register(task_class: type) -> None:
            name = task_class.name
            if name in found and found[name] is not task_class:
                raise PluginLoadError(
                    f"task '{name}' is registered twice: by {_qualname(found[name])} and by {_qualname(task_class)}"
                )
            found[name] = task_class

        load_plugins().hook.register_tasks(register=register)
        _tasks = found
    return _tasks


def get_task_class(name: str) -> type:
    """The Task class registered under ``name``, or an error listing the known ones."""
    tasks = task_classes()
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none (is NLPKIT_LOAD_PLUGINS excluding them?)"
        raise UnknownTaskError(f"unknown task '{name}'; known tasks: {known}")
    return tasks[name]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def reset() -> None:
    """Forget loaded plugins and tasks, so tests can reload under a different environment."""
    global _loaded, _tasks
    for name, _plugin in list(pm.list_name_plugin()):
        pm.unregister(name=name)
    _loaded = False
    _tasks = None
