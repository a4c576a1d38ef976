# The two commands a newcomer needs: `make demo` and `make test`. Both run setup first,
# which is quick when everything is already installed.

.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test: setup
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
