"""A read-only view of a state store, for readers that must never write learned state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tally_core.errors import StoreError
from tally_core.learning import LearnParams, Update
from tally_core.stores.base import Committed, StateStore, TaskKey

__all__ = ["ReadOnlyStore"]


class ReadOnlyStore(StateStore):
    """A view of another store that refuses writes and has no directory (so a
    ``Tally`` built on it keeps no spool and no ledger of its own on disk).

    ``who`` names the reader in the refusal (the dashboard, ``tally stats``).

    >>> from tally_core.stores.memory import MemoryStore
    >>> view = ReadOnlyStore(MemoryStore(), who="tally stats")
    >>> view.load(), view.directory
    ({}, None)
    >>> view.apply("b", [], LearnParams())
    Traceback (most recent call last):
    ...
    tally_core.errors.StoreError: tally stats is read-only: it never writes learned state
    """

    directory = None

    def __init__(self, inner: StateStore, *, who: str = "this view") -> None:
        self._inner = inner
        self._who = who

    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> Committed:
        raise StoreError(f"{self._who} is read-only: it never writes learned state")

    def load(self, keys: Iterable[TaskKey] | None = None) -> dict[TaskKey, dict[str, Any]]:
        return self._inner.load(keys)

    def version(self) -> int:
        return self._inner.version()

    def close(self) -> None:
        self._inner.close()
