"""State stores: where the bandit's learned state lives."""

from __future__ import annotations

from tally_core.stores.base import StateStore
from tally_core.stores.disk import DiskStore
from tally_core.stores.memory import MemoryStore
from tally_core.stores.redis_store import RedisStore

__all__ = ["DiskStore", "MemoryStore", "RedisStore", "StateStore"]
