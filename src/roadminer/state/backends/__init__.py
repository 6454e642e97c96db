"""The state store's backends: in-memory, Redis, and Redis with an in-memory fallback (resilient). May
import state.store and core."""
