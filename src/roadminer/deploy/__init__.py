"""Deployment planning: the GPU memory planner and ``roadminer plan``. May import the layers below training
(models, state, chain, imaging, protocol, core)."""
