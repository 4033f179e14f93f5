"""State stores: where the bandit's learned state lives."""

from __future__ import annotations

import os

from tally_core.errors import InvalidFieldError
from tally_core.home import default_home
from tally_core.stores.base import StateStore
from tally_core.stores.disk import DiskStore
from tally_core.stores.memory import MemoryStore
from tally_core.stores.redis_store import RedisStore, is_redis_url

__all__ = ["DiskStore", "MemoryStore", "RedisStore", "StateStore", "is_redis_url", "open_store"]


def open_store(where: str | os.PathLike[str] | StateStore | None = None) -> StateStore:
    """The state store ``where`` names: a ``StateStore`` as it is; a
    ``redis://``, ``rediss://`` or ``unix://`` URL (``?prefix=`` names the
    deployment's key prefix); ``":memory:"``; or a directory (default: the
    Tally home).

    >>> type(open_store(":memory:")).__name__
    'MemoryStore'
    >>> open_store("postgresql://db/tally")
    Traceback (most recent call last):
    ...
    tally_core.errors.InvalidFieldError: store: a postgresql:// URL is no state store: ...
    """
    if isinstance(where, StateStore):
        return where
    if is_redis_url(where):
        return RedisStore(str(where))
    if where is not None and str(where) == ":memory:":
        return MemoryStore()
    if isinstance(where, str) and "://" in where:  # a URL, not a directory to create
        scheme = where.split("://", 1)[0]
        also = ""
        if scheme.startswith("postgres"):
            also = " (a PostgreSQL URL names the ledger: ledger=, or --store of tally report)"
        raise InvalidFieldError(
            "store", f"a {scheme}:// URL is no state store: use redis://, rediss://, "
            f"unix:// or a directory{also}"
        )
    return DiskStore(default_home() if where is None else where)
