"""Test helpers shared across the suite (imported as ``testkit.*``; tests/ is on sys.path through
its conftest): a real miner on loopback, signed clients, images, free ports."""
