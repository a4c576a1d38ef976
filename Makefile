# The two commands a newcomer needs: `make demo` and `make test`. Both run setup first,
# which is quick when everything is already installed.

.PHONY: setup demo test compose-check lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

# nlpkit's suite, then the example plugin's own, under its own pytest configuration (as its
# author would run it); both get the kafka_broker fixture from nlpkit's pytest plugin. Then the
# Docker deployment, for real.
test: setup
	.venv/bin/python -m pytest
	.venv/bin/python -m pytest examples/nlpkit-langid
	.venv/bin/python scripts/compose_check.py

# Builds the image and runs docker/compose.yaml with three workers (installs Docker where missing).
compose-check: setup
	.venv/bin/python scripts/compose_check.py

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
