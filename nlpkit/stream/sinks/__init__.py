"""Where a processed batch goes: the database (one transaction per batch, outages waited out, poison
rows isolated), the output topic (results; in one Kafka transaction with the offsets when there is no
database) and the dead-letter topic. Sinks read processed rows; they never decode or predict."""
