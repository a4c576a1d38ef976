"""The machine and the process: CPU features, thread counts, file modes, heap trimming, the
garbage collector's pace, SIGTERM, the cache.

Everything else in nlpkit may import from here; this package imports nothing of nlpkit's
but ``nlpkit.errors``, so it can be used from anywhere without a cycle.
"""
