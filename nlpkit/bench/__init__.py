"""``nlpkit bench`` and what it measures against: every way of running a task timed side by side on
the same model, data and machine, each variant in a process of its own (``variant``), against the
transformers pipeline (``baselines``), with starter models where no fine-tuned one exists
(``models``) and side environments for an older transformers release (``side_env``).

The top of the stack beside cli/: it may import anything in nlpkit, and nothing imports it
but the ``bench`` command and the benchmark scripts.
"""
