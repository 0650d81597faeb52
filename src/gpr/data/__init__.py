"""Data: the one schema every source is written in, its validation, and the importers."""
