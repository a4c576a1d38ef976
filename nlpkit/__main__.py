"""``python -m nlpkit`` runs the command line, like the ``nlpkit`` console script."""

from nlpkit.cli import main

main()
