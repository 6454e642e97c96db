"""Model lifecycle: registry (and the cascade it serves), promotion gate, distillation, the teacher that labels
the hard-example queue, the learning loop and their commands. May import cascade, validator and everything
below them."""
