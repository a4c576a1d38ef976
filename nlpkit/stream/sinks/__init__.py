"""nlpkit.stream.sinks."""
