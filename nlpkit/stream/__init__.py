"""Streaming: Kafka in, rows and results out.

- ``worker``: the consumer loop: group membership, keep-alive polls, signals, committing
  each partition's position after the sinks have the batch; ``service``: the worker as a
  long-running process (logs, signals, the metrics and health server);
- ``processing``: a batch of messages into prediction, dead-letter and tombstone rows,
  with no Kafka in it (the worker, ``dead-letters replay --direct`` and ``nlpkit.testing``
  all use it as it is);
- ``messages`` and ``decoding``: message bytes (JSON, text, Schema Registry records) into
  a task's fields, or the reason why not;
- ``sinks``: where rows go (the database, the output topic, the dead-letter topic);
- ``kafka_clients``, ``lag``, ``monitoring``, ``replay``: clients and topics, consumer lag,
  Prometheus metrics and health, dead letters' second chance.

Above inference and store, and never imports cli or bench. This file imports nothing, so that
``nlpkit --help`` can read the option choices of ``decoding`` without loading a Kafka client.
"""
