"""Foundations every package uses: the typed config, the Prometheus metrics registry, scoring (MCC, AUC,
Brier, ECE, reward), command-line value parsing, asyncio helpers, logging. Imports no other roadminer package."""
