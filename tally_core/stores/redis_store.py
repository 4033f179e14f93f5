"""State in Redis, shared by a fleet of app replicas (``pip install "tally-router[redis]"``)."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from tally_core.errors import InvalidFieldError, StoreError
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

__all__ = ["RedisStore"]

_BATCH_TTL_S = 7 * 24 * 3600
_SEP = "\x1f"


class RedisStore(StateStore):
    """Bandit state in Redis: every replica routes on the same learned state.

    ``apply`` is an optimistic transaction: it ``WATCH``es the task states a
    batch touches and its batch id, computes the new states with the same
    arithmetic as every other store, and commits them with ``MULTI``/``EXEC``;
    if another writer changed a watched key meanwhile, it reads again and
    retries, so concurrent replicas never lose an update. States are JSON, so
    any client can read them.

    Parameters
    ----------
    url
        ``redis://host:port/db`` (or ``rediss://``, ``unix://``), or a
        ``redis.Redis`` client to share.
    prefix
        Key prefix, so several Tally deployments can share one Redis.
    directory
        Where this replica keeps its ledger and telemetry spool (both stay
        local); default ``$TALLY_HOME`` or ``~/.tally``.
    max_retries
        Conflicting transactions retried before ``apply`` gives up with a
        ``StoreError`` (the telemetry queue then retries the batch later).
    """

    def __init__(
        self,
        url: Any = "redis://localhost:6379/0",
        *,
        prefix: str = "tally",
        directory: str | os.PathLike[str] | None = None,
        socket_timeout_s: float = 5.0,
        max_retries: int = 100,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StoreError(
                'RedisStore needs the redis client: pip install "tally-router[redis]"'
            ) from exc
        if not isinstance(prefix, str) or not prefix or _SEP in prefix:
            raise InvalidFieldError("prefix", f"must be a non-empty key prefix, got {prefix!r}")
        self._redis = redis
        if isinstance(url, str):
            try:
                self._client = redis.Redis.from_url(
                    url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
                )
            except ValueError as exc:
                raise InvalidFieldError("url", f"is not a Redis URL: {exc}") from None
            self._owns_client = True
        else:
            self._client, self._owns_client = url, False
        from tally_core.router import default_home

        self.directory = str(directory) if directory is not None else default_home()
        self.url = url if isinstance(url, str) else repr(url)
        self._p = prefix
        self._keys = f"{prefix}:keys"
        self._version = f"{prefix}:version"
        self.max_retries = max_retries
        self._closed = False

    def _skey(self, key: TaskKey) -> str:
        return f"{self._p}:state:{key[0]}{_SEP}{key[1]}"

    def _fail(self, exc: Exception) -> StoreError:
        return StoreError(f"redis store at {self.url} failed: {type(exc).__name__}: {exc}")

    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> Committed:
        groups = group_updates(updates)
        keys = list(groups)
        skeys = [self._skey(k) for k in keys]
        bkey = f"{self._p}:batch:{batch_id}"
        members = [f"{k[0]}{_SEP}{k[1]}" for k in keys]
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for attempt in range(self.max_retries):
                    try:
                        pipe.watch(bkey, *skeys)  # type: ignore[no-untyped-call]
                        seen = pipe.get(bkey)
                        if seen is not None:
                            pipe.unwatch()
                            return Committed(
                                False, self._starts(seen), self.load(keys), self.version()
                            )
                        raw = pipe.mget(skeys) if skeys else []
                        pipe.multi()
                        starts: dict[TaskKey, float] = {}
                        out: dict[TaskKey, dict[str, Any]] = {}
                        for skey, blob, key in zip(skeys, raw, keys, strict=True):
                            state = self._decode(key, blob) if blob is not None else None
                            if state is None:
                                state = new_task_state()
                            starts[key] = fold(state, groups[key], params, self.url)
                            out[key] = state
                            pipe.set(skey, json.dumps(state, separators=(",", ":")))
                        if members:
                            pipe.sadd(self._keys, *members)
                        # Remember the clocks the batch started from, so a
                        # replay still tells where its outcomes landed.
                        mark = json.dumps([[k[0], k[1], c] for k, c in starts.items()])
                        pipe.set(bkey, mark, ex=_BATCH_TTL_S)
                        pipe.incr(self._version)
                        result = pipe.execute()
                        return Committed(True, starts, out, int(result[-1]))
                    except self._redis.WatchError:
                        # Another replica wrote one of these states: read again.
                        time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
                raise StoreError(
                    f"redis store at {self.url}: {self.max_retries} conflicting writes in a row"
                )
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc

    @staticmethod
    def _starts(mark: Any) -> dict[TaskKey, float]:
        try:
            return {(str(o), str(t)): float(c) for o, t, c in json.loads(mark)}
        except (ValueError, TypeError):  # an older version's marker: clocks unknown
            return {}

    def _decode(self, key: TaskKey, blob: Any) -> dict[str, Any]:
        try:
            state = json.loads(blob)
        except ValueError as exc:
            raise StoreError(
                f"redis store at {self.url}: the state of org {key[0]!r}, task type "
                f"{key[1]!r} is not JSON ({exc})"
            ) from None
        return check_state(key, state, self.url)

    def load(self, keys: Iterable[TaskKey] | None = None) -> dict[TaskKey, dict[str, Any]]:
        try:
            if keys is None:
                wanted: list[TaskKey] = []
                for m in self._client.smembers(self._keys):
                    org, _, task = (m.decode() if isinstance(m, bytes) else m).partition(_SEP)
                    wanted.append((org, task))
            else:
                wanted = list(keys)
            if not wanted:
                return {}
            blobs = self._client.mget([self._skey(k) for k in wanted])
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc
        return {
            k: self._decode(k, b) for k, b in zip(wanted, blobs, strict=True) if b is not None
        }

    def version(self) -> int:
        try:
            return int(self._client.get(self._version) or 0)
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc

    def reset(self, org: str | None = None, task_type: str | None = None) -> None:
        try:
            for key in self.load():
                if (org is None or key[0] == org) and (task_type is None or key[1] == task_type):
                    with self._client.pipeline(transaction=True) as pipe:
                        pipe.delete(self._skey(key))
                        pipe.srem(self._keys, f"{key[0]}{_SEP}{key[1]}")
                        pipe.execute()
            self._client.incr(self._version)
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc

    # -- rollout state: a hash of JSON records by model, and a version counter ----

    def _rkeys(self) -> tuple[str, str]:
        return f"{self._p}:rollouts", f"{self._p}:rollouts:version"

    def rollout_state(self) -> dict[str, Any]:
        try:
            raw = self._client.hgetall(self._rkeys()[0])
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc
        out: dict[str, Any] = {}
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else str(k)
            try:
                out[name] = json.loads(v)
            except ValueError:
                raise StoreError(f"redis store at {self.url}: the rollout record of "
                                 f"{name!r} is not JSON") from None
        return out

    def update_rollout(self, model: str, change: RolloutChange) -> Any:
        """Compare-and-set: ``WATCH`` the rollouts hash, compute, ``MULTI``/``EXEC``;
        a write by another replica meanwhile makes it read and compute again."""
        hkey, vkey = self._rkeys()
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for attempt in range(self.max_retries):
                    try:
                        pipe.watch(hkey)  # type: ignore[no-untyped-call]
                        blob = pipe.hget(hkey, model)
                        try:
                            old = json.loads(blob) if blob is not None else None
                        except ValueError:
                            old = None  # a damaged record reads as none (and is replaced)
                        new = change(old)
                        pipe.multi()
                        if new is None:
                            pipe.hdel(hkey, model)
                        else:
                            pipe.hset(hkey, model, json.dumps(new, separators=(",", ":")))
                        pipe.incr(vkey)
                        pipe.execute()
                        return new
                    except self._redis.WatchError:
                        time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
                raise StoreError(
                    f"redis store at {self.url}: {self.max_retries} conflicting rollout "
                    "writes in a row"
                )
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc

    def rollout_version(self) -> int:
        try:
            return int(self._client.get(self._rkeys()[1]) or 0)
        except self._redis.RedisError as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._owns_client:
                self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self._p!r})"
