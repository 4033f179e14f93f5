from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from collections.abc import Iterator

import pytest

from tally_core import DiskStore, MemoryStore, RedisStore, StateStore, StoreError
from tally_core.learning import LearnParams, Update
from tests.redis_support import TlsRedis, tls_redis_or_skip

P = LearnParams()


def upd(
    model: str = "m",
    q: float | None = 1.0,
    task: str = "qa-simple",
    org: str = "default",
    cell: str = "*",
) -> Update:
    return Update(org, task, cell, model, q, q is None, 100.0, 10, 0.001)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> Iterator[TlsRedis]:
    server = tls_redis_or_skip(tmp_path_factory.mktemp("tls"))
    yield server
    server.stop()


@pytest.fixture(params=["memory", "disk", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("redis-tls", marks=pytest.mark.redis)])  # fmt: skip
def store(request, tmp_path) -> StateStore:
    s: StateStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "disk":
        s = DiskStore(tmp_path / "s")
    elif request.param == "redis-tls":  # TLS with a client certificate
        server, c = (tls := request.getfixturevalue("tls_redis")), tls.certs
        s = RedisStore(server.url, prefix=f"t-{uuid.uuid4().hex}", directory=tmp_path,
                       ssl_ca_certs=c["ca_crt"], ssl_certfile=c["client_crt"],
                       ssl_keyfile=c["client_key"])  # fmt: skip
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, prefix=f"t-{uuid.uuid4().hex}", directory=tmp_path)
    yield s
    s.close()


def test_contract_load_only_the_keys_asked(store: StateStore) -> None:
    store.apply("b", [upd(task="a"), upd(task="b"), upd(task="b")], P)
    some = store.load([("default", "b"), ("default", "nope")])
    assert list(some) == [("default", "b")] and some[("default", "b")]["clock"] == 2.0


def test_contract_apply_load_version(store: StateStore) -> None:
    v0 = store.version()
    assert store.apply("b1", [upd(q=1.0), upd(q=0.0), upd(cell="json|short|0|n")], P)
    assert store.version() != v0
    state = store.load()[("default", "qa-simple")]
    assert state["clock"] == 3.0
    arm = state["cells"]["*"]["m"]
    assert arm[11] == 3.0  # calls, at task level
    assert state["cells"]["json|short|0|n"]["m"][11] == 1.0


def test_contract_batch_ids_make_replays_idempotent(store: StateStore) -> None:
    first = store.apply("same", [upd(), upd()], P)
    again = store.apply("same", [upd(), upd()], P)
    assert first.applied is True and again.applied is False
    # A replay still says where its outcomes landed, and what the state is.
    assert dict(again.starts) == dict(first.starts) == {("default", "qa-simple"): 0.0}
    assert again.states[("default", "qa-simple")]["clock"] == 2.0
    assert store.load()[("default", "qa-simple")]["clock"] == 2.0


def test_contract_apply_returns_what_it_committed(store: StateStore) -> None:
    from tally_core.stores.base import update_clocks

    store.apply("a", [upd(), upd(task="other")], P)
    batch = [upd(), upd(task="other"), upd()]
    got = store.apply("b", batch, P)
    # The clocks each outcome landed at, from the store, not from a local guess.
    assert update_clocks(batch, got.starts) == [2.0, 2.0, 3.0]
    # The states after the batch, equal to what a fresh load reads.
    assert got.states == store.load([("default", "qa-simple"), ("default", "other")])
    assert got.version == store.version()


def test_contract_a_damaged_state_is_a_store_error_naming_its_key(store: StateStore) -> None:
    store.apply("a", [upd(task="broken")], P)
    key = ("default", "broken")
    if isinstance(store, MemoryStore):
        store._states[key] = "not a state"  # type: ignore[assignment]
    elif isinstance(store, DiskStore):
        store._cache.set("s:default\x1fbroken", {"clock": "x", "cells": {}})
    else:
        store._client.set(store._skey(key), b"[1, 2]")
    with pytest.raises(StoreError, match="org 'default', task type 'broken'.*damaged"):
        store.load()
    with pytest.raises(StoreError, match="task type 'broken'"):
        store.apply("b", [upd(task="broken")], P)


def test_contract_load_returns_a_copy(store: StateStore) -> None:
    store.apply("b", [upd()], P)
    snap = store.load()
    snap[("default", "qa-simple")]["clock"] = 99.0
    assert store.load()[("default", "qa-simple")]["clock"] == 1.0


def test_contract_reset(store: StateStore) -> None:
    store.apply("b", [upd(task="a"), upd(task="b"), upd(task="a", org="acme")], P)
    store.reset(task_type="a")
    assert set(store.load()) == {("default", "b")}


def test_disk_store_unopenable_path_is_a_store_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        DiskStore(blocker / "under-a-file")


def _writer(path: str, worker: int, n: int) -> None:
    s = DiskStore(path)
    for i in range(0, n, 50):
        s.apply(f"w{worker}-{i}", [upd(model=f"m{i % 3}") for _ in range(50)], P)
    s.close()


def test_four_processes_lose_no_update(tmp_path) -> None:
    path = str(tmp_path / "shared")
    DiskStore(path).close()
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 2000)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    s = DiskStore(path)
    state = s.load()[("default", "qa-simple")]
    assert state["clock"] == 8000.0
    assert sum(arm[11] for arm in state["cells"]["*"].values()) == 8000.0
    s.close()


def _redis_writer(url: str, prefix: str, worker: int, n: int) -> None:
    s = RedisStore(url, prefix=prefix)
    for i in range(0, n, 50):
        s.apply(f"w{worker}-{i}", [upd(model=f"m{i % 3}") for _ in range(50)], P)
    s.close()


@pytest.mark.redis
def test_four_replicas_lose_no_update_in_redis(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_redis_writer, args=(redis_url, prefix, w, 2000)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with RedisStore(redis_url, prefix=prefix) as s:
        state = s.load()[("default", "qa-simple")]
    assert state["clock"] == 8000.0
    assert sum(arm[11] for arm in state["cells"]["*"].values()) == 8000.0


def test_redis_store_unreachable_is_a_store_error(tmp_path) -> None:
    with socket_closed_port() as port:
        s = RedisStore(f"redis://127.0.0.1:{port}/0", directory=tmp_path, socket_timeout_s=0.5)
        with pytest.raises(StoreError, match="redis store at redis://127.0.0.1"):
            s.apply("b", [upd()], P)
        with pytest.raises(StoreError):
            s.version()
        s.close()


class socket_closed_port:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return int(self._s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._s.close()


# -- rollout records (tally_core.rollout keeps its state here) ----------------------------


def _bump(old):
    rec = old or {"n": 0}
    rec["n"] += 1
    return rec


def test_contract_rollout_records_update_delete_and_version(store: StateStore) -> None:
    v0 = store.rollout_version()
    assert store.rollout_state() == {}
    assert store.update_rollout("cand", _bump) == {"n": 1}
    assert store.update_rollout("cand", _bump) == {"n": 2}
    store.update_rollout("other", lambda old: {"seen": old})
    assert store.rollout_state() == {"cand": {"n": 2}, "other": {"seen": None}}
    assert store.rollout_version() != v0
    got = store.rollout_state()
    got["cand"]["n"] = 99  # a copy: the store keeps its own
    assert store.rollout_state()["cand"] == {"n": 2}
    assert store.update_rollout("cand", lambda old: None) is None  # None deletes
    assert list(store.rollout_state()) == ["other"]


def test_contract_rollout_updates_from_threads_lose_none(store: StateStore) -> None:
    import threading

    def work() -> None:
        for _ in range(100):
            store.update_rollout("cand", _bump)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.rollout_state()["cand"]["n"] == 400


def _rollout_writer(kind: str, where: str, prefix: str, n: int) -> None:
    s = DiskStore(where) if kind == "disk" else RedisStore(where, prefix=prefix)
    for _ in range(n):
        s.update_rollout("cand", _bump)
    s.close()


@pytest.mark.parametrize("kind", ["disk", pytest.param("redis", marks=pytest.mark.redis)])
def test_rollout_updates_from_four_processes_lose_none(kind: str, request, tmp_path) -> None:
    where = str(tmp_path / "shared") if kind == "disk" else request.getfixturevalue("redis_url")
    prefix = f"t-{uuid.uuid4().hex}"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rollout_writer, args=(kind, where, prefix, 150))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    s = DiskStore(where) if kind == "disk" else RedisStore(where, prefix=prefix)
    assert s.rollout_state()["cand"]["n"] == 600
    s.close()
