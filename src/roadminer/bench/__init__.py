"""Benchmarks: the fast path against the reference-style baseline."""
