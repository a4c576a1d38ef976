"""nlpkit.stream."""
