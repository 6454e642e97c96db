"""Benchmarks: the fast engines, the real miner over signed loopback HTTP, and the reference-style baseline.
May import the miner and everything below it."""
