"""In-process state: fast, shared by threads, gone when the process ends."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from tally_core.learning import LearnParams, Update, new_task_state
from tally_core.stores.base import (
    Committed,
    StateStore,
    TaskKey,
    check_state,
    copy_state,
    fold,
    group_updates,
)

__all__ = ["MemoryStore"]


class MemoryStore(StateStore):
    """State in a dict behind a lock. The store for tests and simulations.

    >>> from tally_core.learning import LearnParams, Update
    >>> store = MemoryStore()
    >>> u = Update("default", "qa-simple", "*", "gpt-4o-mini", 1.0, False, 300.0, 20, 0.0001)
    >>> store.apply("b1", [u], LearnParams()).applied, store.apply("b1", [u], LearnParams()).applied
    (True, False)
    >>> store.load()[("default", "qa-simple")]["clock"]
    1.0
    """

    def __init__(self, *, remember_batches: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._states: dict[TaskKey, dict[str, Any]] = {}
        # Batch id -> the clocks it started from, so a replay can say where
        # its outcomes landed.
        self._batches: OrderedDict[str, dict[TaskKey, float]] = OrderedDict()
        self._remember = remember_batches
        self._version = 0

    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> Committed:
        with self._lock:
            groups = group_updates(updates)
            seen = self._batches.get(batch_id)
            if seen is not None:
                return Committed(
                    False,
                    seen,
                    {k: copy_state(self._states[k]) for k in groups if k in self._states},
                    self._version,
                )
            starts: dict[TaskKey, float] = {}
            out: dict[TaskKey, dict[str, Any]] = {}
            for key, group in groups.items():
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = new_task_state()
                starts[key] = fold(state, group, params, "memory")
                out[key] = copy_state(state)
            self._batches[batch_id] = starts
            if len(self._batches) > self._remember:
                self._batches.popitem(last=False)
            self._version += 1
            return Committed(True, starts, out, self._version)

    def load(self, keys: Iterable[TaskKey] | None = None) -> dict[TaskKey, dict[str, Any]]:
        with self._lock:
            wanted = list(self._states) if keys is None else [k for k in keys if k in self._states]
            return {k: copy_state(check_state(k, self._states[k], "memory")) for k in wanted}

    def version(self) -> int:
        return self._version

    def reset(self, org: str | None = None, task_type: str | None = None) -> None:
        with self._lock:
            for key in list(self._states):
                if (org is None or key[0] == org) and (task_type is None or key[1] == task_type):
                    del self._states[key]
            self._version += 1
