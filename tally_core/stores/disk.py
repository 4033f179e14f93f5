"""Embedded persistent state on diskcache, shared by processes on one machine."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tally_core.errors import StoreError
from tally_core.home import StoreDir
from tally_core.learning import LearnParams, Update, new_task_state
from tally_core.stores.base import (
    Committed,
    RolloutChange,
    StateStore,
    TaskKey,
    check_state,
    fold,
    group_updates,
)

__all__ = ["DiskStore"]

_KEYS = "keys"  # the set of task-state keys, so load() need not scan batch ids
_VERSION = "version"
_ROLLOUTS = "rollouts"  # {model: record}: small, rewritten whole in one transaction
_ROLLOUTS_VERSION = "rollouts-version"
_BATCH_TTL_S = 7 * 24 * 3600.0


class DiskStore(StateStore):
    """State in a diskcache directory (SQLite underneath).

    Every ``apply`` runs in one diskcache transaction (an immediate SQLite
    transaction), so writers in several processes serialise and none loses an
    update. Reads go to the routing snapshot, never to disk on the hot path.

    Parameters
    ----------
    directory
        Where the state lives; ``~`` and ``TALLY_HOME``-style paths are fine.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import diskcache  # not at import time: `import tally_core` stays fast

        self._diskcache = diskcache
        path = Path(directory).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(StoreDir(path).state), timeout=60, eviction_policy="none"
            )
        except Exception as exc:  # permissions, a file in the way, a full disk
            raise StoreError(f"cannot open state store at {path}: {exc}") from exc
        self.directory = str(path)
        self._closed = False

    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> Committed:
        groups = group_updates(updates)
        try:
            with self._cache.transact():
                bkey = f"b:{batch_id}"
                seen = self._cache.get(bkey)
                if seen is not None:
                    # Remembered with the clocks it started from (older
                    # versions stored 1: the clocks are then unknown).
                    starts = dict(seen) if isinstance(seen, dict) else {}
                    return Committed(False, starts, self._load(groups), self._version())
                keys: set[TaskKey] | None = None
                starts = {}
                out: dict[TaskKey, dict[str, Any]] = {}
                for key, group in groups.items():
                    skey = f"s:{key[0]}\x1f{key[1]}"
                    state = self._cache.get(skey)
                    if state is None:
                        state = new_task_state()
                        if keys is None:
                            keys = set(self._cache.get(_KEYS, default=set()))
                        keys.add(key)
                    starts[key] = fold(state, group, params, self.directory or "")
                    self._cache.set(skey, state)
                    out[key] = state  # unpickled for this call: the caller may keep it
                if keys is not None:
                    self._cache.set(_KEYS, keys)
                self._cache.set(bkey, starts, expire=_BATCH_TTL_S)
                version = int(self._cache.incr(_VERSION, default=0))
                return Committed(True, starts, out, version)
        except StoreError:
            raise
        except self._diskcache.Timeout as exc:
            raise StoreError(f"state store at {self.directory} is locked: {exc}") from exc
        except Exception as exc:  # sqlite3.OperationalError and friends
            raise StoreError(f"state store at {self.directory} failed: {exc}") from exc

    def _load(self, keys: Iterable[TaskKey]) -> dict[TaskKey, dict[str, Any]]:
        out: dict[TaskKey, dict[str, Any]] = {}
        for key in keys:
            state = self._cache.get(f"s:{key[0]}\x1f{key[1]}")
            if state is not None:
                out[key] = check_state(key, state, self.directory or "")
        return out

    def _version(self) -> int:
        return int(self._cache.get(_VERSION, default=0))

    def load(self, keys: Iterable[TaskKey] | None = None) -> dict[TaskKey, dict[str, Any]]:
        try:
            with self._cache.transact():
                if keys is None:
                    keys = self._cache.get(_KEYS, default=set())
                return self._load(keys)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"state store at {self.directory} failed: {exc}") from exc

    def version(self) -> int:
        try:
            return self._version()
        except Exception as exc:
            raise StoreError(f"state store at {self.directory} failed: {exc}") from exc

    def reset(self, org: str | None = None, task_type: str | None = None) -> None:
        with self._cache.transact():
            keys: set[TaskKey] = set(self._cache.get(_KEYS, default=set()))
            for key in list(keys):
                if (org is None or key[0] == org) and (task_type is None or key[1] == task_type):
                    self._cache.delete(f"s:{key[0]}\x1f{key[1]}")
                    keys.discard(key)
            self._cache.set(_KEYS, keys)
            self._cache.incr(_VERSION, default=0)

    def rollout_state(self) -> dict[str, Any]:
        try:
            return dict(self._cache.get(_ROLLOUTS, default={}))
        except Exception as exc:
            raise StoreError(f"state store at {self.directory} failed: {exc}") from exc

    def update_rollout(self, model: str, change: RolloutChange) -> Any:
        # One immediate SQLite transaction: processes on this disk serialise here.
        try:
            with self._cache.transact():
                records = dict(self._cache.get(_ROLLOUTS, default={}))
                new = change(records.get(model))
                if new is None:
                    records.pop(model, None)
                else:
                    records[model] = new
                self._cache.set(_ROLLOUTS, records)
                self._cache.incr(_ROLLOUTS_VERSION, default=0)
                return new
        except self._diskcache.Timeout as exc:
            raise StoreError(f"state store at {self.directory} is locked: {exc}") from exc
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"state store at {self.directory} failed: {exc}") from exc

    def rollout_version(self) -> int:
        try:
            return int(self._cache.get(_ROLLOUTS_VERSION, default=0))
        except Exception as exc:
            raise StoreError(f"state store at {self.directory} failed: {exc}") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cache.close()
