"""The state store in both backends (memory, real redis-server) for the state tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from roadminer.state.backends.memory import MemoryStore
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.store import StateStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        s: StateStore = MemoryStore(prefix="t:")
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix="t:")
    yield s
    await s.close()
