"""In-process state: fast, shared by threads, gone when the process ends."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from tally_core._state import LearnParams, Update, apply_updates, new_task_state
from tally_core.stores.base import StateStore, TaskKey, group_updates

__all__ = ["MemoryStore"]


class MemoryStore(StateStore):
    """State in a dict behind a lock. The store for tests and simulations.

    >>> from tally_core._state import LearnParams, Update
    >>> store = MemoryStore()
    >>> u = Update("default", "qa-simple", "*", "gpt-4o-mini", 1.0, False, 300.0, 20, 0.0001)
    >>> store.apply("b1", [u], LearnParams()), store.apply("b1", [u], LearnParams())
    (True, False)
    >>> store.load()[("default", "qa-simple")]["clock"]
    1.0
    """

    def __init__(self, *, remember_batches: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._states: dict[TaskKey, dict[str, Any]] = {}
        self._batches: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_batches
        self._version = 0

    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> bool:
        with self._lock:
            if batch_id in self._batches:
                return False
            for key, group in group_updates(updates).items():
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = new_task_state()
                apply_updates(state, group, params)
            self._batches[batch_id] = None
            if len(self._batches) > self._remember:
                self._batches.popitem(last=False)
            self._version += 1
            return True

    def load(self, keys: Iterable[TaskKey] | None = None) -> dict[TaskKey, dict[str, Any]]:
        with self._lock:
            if keys is None:
                return copy.deepcopy(self._states)
            return {k: copy.deepcopy(self._states[k]) for k in keys if k in self._states}

    def version(self) -> int:
        return self._version

    def reset(self, org: str | None = None, task_type: str | None = None) -> None:
        with self._lock:
            for key in list(self._states):
                if (org is None or key[0] == org) and (task_type is None or key[1] == task_type):
                    del self._states[key]
            self._version += 1
