"""Finds nlpkit's packages, so no new subpackage is ever left out of an installed (non-editable) nlpkit.

Everything else is in pyproject.toml. The built-in plugins and the migrations keep the house
layout on disk (plugins/, migrations/) but install as nlpkit_plugins and nlpkit_migrations
(see [tool.setuptools.package-dir] there), which setuptools' own finder cannot rename.
"""

from setuptools import find_packages, setup


def installed_as(name: str, directory: str) -> list[str]:
    return [name, *(f"{name}.{package}" for package in find_packages(directory))]


setup(
    packages=[
        *find_packages(include=["nlpkit", "nlpkit.*"]),
        *installed_as("nlpkit_plugins", "plugins"),
        *installed_as("nlpkit_migrations", "migrations"),
    ]
)
