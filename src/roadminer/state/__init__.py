"""Shared state: the store and its backends, nonces, sessions, history, the hard-example queue and its labels
(provenance, the labelling work list), the model timeline, and the layer that wires them. May import
protocol, imaging and core."""
