"""Operations helpers: the GPU memory planner (``roadminer plan``)."""
