"""Pieces of `benchmarks/quality.py`: data readers, table builders, models, metrics."""
