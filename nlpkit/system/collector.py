"""Run Python's cyclic garbage collector less often in nlpkit's own processes.

Why: reading a batch makes many short-lived containers (token offsets, entity dicts, rows to
store), and CPython starts a young collection every 700 container allocations beyond the
frees, a middle one every tenth of those and a full one every tenth of those (when enough
objects have survived since the last): a full collection walks every object the process holds,
about 130,000-150,000 in a process running the engine on an OpenVINO backend and 490,000 once
transformers (and with it torch) is imported. Nearly all of a batch's objects are freed by
reference counting the moment they go out of use; the collector is only needed for reference
cycles, and those can wait.

Measured on 2 AMD Zen 4 cores (AVX-512 with BF16, no AMX), the engine over CoNLL valid (3,250
sentences, NER, openvino-bf16) in one process with transformers imported, the settings taking
turns, medians of five: 673 sentences/s with CPython's thresholds, 707 with the young threshold
at 50,000, 712 with the collector off; SST-2 dev sentiment (a few objects per sentence) the same
within noise. ``gc.freeze()`` after loading gained as much, but would keep any cycle among the
frozen objects for good.

Only the processes nlpkit starts itself (the ``nlpkit`` command, the benches' variants) do this: a
library call that changed the interpreter's collector for its host would surprise it.
"""

from __future__ import annotations

import gc

# Container allocations (beyond frees) between young collections; CPython's default is 700.
YOUNG_COLLECTION_THRESHOLD = 50_000


def collect_less_often() -> None:
    """Raise the collector's first threshold; the older generations keep their ratios to it."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
