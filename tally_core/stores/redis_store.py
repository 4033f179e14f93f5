"""State in Redis, shared by a fleet of app replicas (``pip install "tally-router[redis]"``)."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tally_core.errors import InvalidFieldError, StoreError
from tally_core.home import default_home
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

__all__ = ["PASSWORD_ENV", "REDIS_SCHEMES", "RedisStore", "is_redis_url"]

#: The URL schemes a Redis (or Valkey) state store is named by.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: Where the password is read from when neither the arguments nor the URL give one.
PASSWORD_ENV = "TALLY_REDIS_PASSWORD"
_BATCH_TTL_S = 7 * 24 * 3600
_SEP = "\x1f"
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def is_redis_url(where: object) -> bool:
    """Whether ``where`` names a Redis server rather than a directory.

    >>> is_redis_url("rediss://tally@cache:6380/0"), is_redis_url("/var/lib/tally")
    (True, False)
    """
    return isinstance(where, str) and where.startswith(REDIS_SCHEMES)


def _split_prefix(url: str) -> tuple[str, str | None]:
    """``url`` without its ``prefix=`` query argument (Tally's, not the
    client's), and that prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    if not prefixes:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), prefixes[-1]


def _drop_credentials(url: str, user: bool, password: bool) -> str:
    """``url`` without its user name and/or password (an argument overrides
    them: redis-py would otherwise let the URL's win)."""
    parts = urlsplit(url)
    info, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    name, colon, secret = info.partition(":")
    name = "" if user else name
    secret = "" if password else secret
    info = name + (f":{secret}" if colon and secret else "")
    netloc = f"{info}@{host}" if info else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisStore(StateStore):
    """Bandit state in Redis (or Valkey): every replica routes on the same learned state.

    ``apply`` is an optimistic transaction: it ``WATCH``es the task states a
    batch touches and its batch id, computes the new states with the same
    arithmetic as every other store, and commits them with ``MULTI``/``EXEC``;
    if another writer changed a watched key meanwhile, it reads again and
    retries, so concurrent replicas never lose an update. States are JSON, so
    any client can read them. Every key starts with ``{prefix}:``, so
    deployments with their own prefix share one server and never see each
    other's state (an ACL user limited to ``~{prefix}:*`` can run one).

    Parameters
    ----------
    url
        ``redis://[user:password@]host:port/db``, ``rediss://...`` for TLS, or
        ``unix:///path/to/socket``; ``?prefix=NAME`` sets ``prefix``. Or a
        ``redis.Redis`` client to share.
    prefix
        Key prefix of this deployment (default ``tally``, or the URL's).
    username, password
        ACL user and password (``requirepass`` servers: a password alone);
        they override the URL's, so a secret need not sit in a URL. With
        neither a ``password`` nor one in the URL, ``$TALLY_REDIS_PASSWORD``
        is used if set (so ``tally stats --store URL`` keeps it out of argv).
    ssl_ca_certs, ssl_certfile, ssl_keyfile
        TLS with a ``rediss://`` URL: the CA bundle that signed the server's
        certificate (default: the system's), and this client's certificate
        and key when the server asks for one (``tls-auth-clients``).
    ssl_check_hostname
        Check the server certificate's name against the URL's host (on by
        default; a certificate made for an IP address needs that address).
    directory
        Where this replica keeps its ledger and telemetry spool (both stay
        local unless the ledger is PostgreSQL); default the Tally home.
    max_retries
        Conflicting transactions retried before ``apply`` gives up with a
        ``StoreError`` (the telemetry queue then retries the batch later).

    Errors never show the password: ``url`` is the server as
    ``scheme://user@host:port/db``.
    """

    def __init__(
        self,
        url: Any = "redis://localhost:6379/0",
        *,
        prefix: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ssl_ca_certs: str | os.PathLike[str] | None = None,
        ssl_certfile: str | os.PathLike[str] | None = None,
        ssl_keyfile: str | os.PathLike[str] | None = None,
        ssl_check_hostname: bool = True,
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
        self._redis = redis
        url_prefix = None
        if isinstance(url, str):
            if not is_redis_url(url):
                raise InvalidFieldError(
                    "url", f"must start with {', '.join(REDIS_SCHEMES)}, got {url.split(':')[0]!r}"
                )
            url, url_prefix = _split_prefix(url)
        if prefix is not None and url_prefix is not None and prefix != url_prefix:
            raise InvalidFieldError(
                "prefix", f"is {prefix!r} but the URL says prefix={url_prefix!r}: give one"
            )
        if prefix is None:
            prefix = url_prefix if url_prefix is not None else "tally"
        if not isinstance(prefix, str) or not prefix or _SEP in prefix:
            raise InvalidFieldError("prefix", f"must be a non-empty key prefix, got {prefix!r}")
        tls = {"ssl_ca_certs": ssl_ca_certs, "ssl_certfile": ssl_certfile,
               "ssl_keyfile": ssl_keyfile}  # fmt: skip
        given = {k: os.fspath(v) for k, v in tls.items() if v is not None}
        in_url = dict(parse_qsl(urlsplit(url).query)) if isinstance(url, str) else {}
        for name in _TLS_FILES:
            path = given.get(name, in_url.get(name))
            if path is not None and not os.path.isfile(path):
                raise InvalidFieldError(name, f"no such file: {path}")
        if isinstance(url, str):
            if given and not url.startswith("rediss://"):
                raise InvalidFieldError(
                    "url", f"TLS options ({', '.join(given)}) need a rediss:// URL"
                )
            options: dict[str, Any] = {
                "socket_timeout": socket_timeout_s,
                "socket_connect_timeout": socket_timeout_s,
            }
            url = _drop_credentials(url, username is not None, password is not None)
            if username is not None:
                options["username"] = username
            if password is None and urlsplit(url).password is None:
                password = os.environ.get(PASSWORD_ENV) or None
            if password is not None:
                options["password"] = password
            if url.startswith("rediss://"):
                options.update(given, ssl_check_hostname=ssl_check_hostname)
            try:
                self._client = redis.Redis.from_url(url, **options)
            except ValueError as exc:
                raise InvalidFieldError("url", f"is not a Redis URL: {exc}") from None
            self._owns_client = True
        else:
            if given or username is not None or password is not None:
                raise InvalidFieldError(
                    "url", "credentials and TLS options go with a URL, not a client"
                )
            self._client, self._owns_client = url, False
        self.directory = str(directory) if directory is not None else default_home()
        self.url = self._describe()
        self._p = prefix
        self._keys = f"{prefix}:keys"
        self._version = f"{prefix}:version"
        self.max_retries = max_retries
        self._closed = False

    @property
    def prefix(self) -> str:
        return self._p

    def _describe(self) -> str:
        """The server as ``scheme://user@host:port/db``: no password, ever."""
        try:
            kw = self._client.connection_pool.connection_kwargs
            cls = self._client.connection_pool.connection_class
        except AttributeError:  # a client of another shape
            return type(self._client).__name__
        user = f"{kw['username']}@" if kw.get("username") else ""
        if "path" in kw:
            return f"unix://{user}{kw['path']}"
        scheme = "rediss" if issubclass(cls, self._redis.SSLConnection) else "redis"
        host, port, db = kw.get("host", "localhost"), kw.get("port", 6379), kw.get("db", 0)
        return f"{scheme}://{user}{host}:{port}/{db}"

    def _skey(self, key: TaskKey) -> str:
        return f"{self._p}:state:{key[0]}{_SEP}{key[1]}"

    def _fail(self, exc: Exception) -> StoreError:
        """A ``StoreError`` naming the server and what to check (never the password)."""
        r = self._redis
        detail = f"{type(exc).__name__}: {exc}"
        secret = getattr(self._client, "connection_pool", None)
        secret = secret.connection_kwargs.get("password") if secret is not None else None
        if secret:
            detail = detail.replace(str(secret), "***")
        text = str(exc)
        denied = getattr(r.exceptions, "NoPermissionError", ())
        if isinstance(exc, r.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
            hint = "authentication failed: check the username and password (or the server's ACL)"
        elif isinstance(exc, denied) or "NOPERM" in text or "no permissions" in text:
            hint = (
                f"the user may not use these keys or commands: its ACL needs ~{self._p}:* "
                "and +@read +@write +@transaction"
            )
        elif any(w in text.lower() for w in ("ssl", "tls", "certificate")):
            hint = (
                "the TLS handshake failed: check ssl_ca_certs (the CA that signed the "
                "server's certificate) and, if the server asks for one, ssl_certfile/ssl_keyfile"
            )
        elif isinstance(exc, r.TimeoutError):
            hint = "the server did not answer in time"
        elif isinstance(exc, r.ConnectionError):
            hint = "cannot connect: is the server running and reachable, and does it want TLS?"
        else:
            hint = "the command failed"
        return StoreError(f"redis store at {self.url} (prefix {self._p!r}): {hint} ({detail})")

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
                    f"redis store at {self.url} (prefix {self._p!r}): {self.max_retries} "
                    "conflicting writes in a row"
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
