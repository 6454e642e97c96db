"""Shared state: the store and its backends, nonces, sessions, history, the hard-example queue, the model
timeline, and the layer that wires them. May import protocol, imaging and core."""
