"""The miner: backend, one request pipeline with routes per protocol, batcher, guards, hot reload, chain
metrics, run wiring, demo. The one package that wires the others together at run time (only bench and cli sit above)."""
