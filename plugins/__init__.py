"""nlpkit's built-in plugins. Each is registered through the ``nlpkit`` entry-point group in
pyproject.toml, exactly as a third-party plugin would be, so any of them can be left out
with ``NLPKIT_LOAD_PLUGINS`` and ``nlpkit plugins`` lists them beside external ones."""
