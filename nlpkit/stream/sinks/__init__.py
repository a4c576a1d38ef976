"""Where a processed batch goes: the database (one transaction per batch, outages waited out, poison
rows isolated) and the dead-letter topic."""
