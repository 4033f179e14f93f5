"""Tally replicas sharing one bandit through a real redis-server."""

from __future__ import annotations

import uuid

import pytest

from conftest import redis_or_skip
from tally_core import RedisStore, Tally

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
QUALITY = {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95, "gpt-4o": 0.97}

pytestmark = pytest.mark.redis


def replica(url: str, prefix: str, home, seed: int) -> Tally:
    store = RedisStore(url, prefix=prefix, directory=home)
    return Tally(POOL, fallback="gpt-4o", store=store, seed=seed, background=False)


def test_what_one_replica_learns_every_replica_routes_on(redis_url: str, tmp_path) -> None:
    prefix = f"fleet-{uuid.uuid4().hex}"
    a = replica(redis_url, prefix, tmp_path / "a", 1)
    b = replica(redis_url, prefix, tmp_path / "b", 2)
    try:
        for i in range(240):  # traffic split over two replicas, learned as one
            t = a if i % 2 else b
            d = t.route(task_type="qa", quality_floor=0.8)
            t.telemetry(d, quality=QUALITY[d.model], input_tokens=400, output_tokens=80)
            t.refresh()
        a.refresh()
        b.refresh()
        calls = {s["model"]: s["calls"] for s in a.stats("qa-simple")}
        assert sum(calls.values()) == 240
        assert a.stats("qa-simple") == b.stats("qa-simple")
        picks = [b.route(task_type="qa", quality_floor=0.8).model for _ in range(100)]
        assert picks.count("claude-haiku-4-5") >= 85
        assert picks.count("gpt-4o-mini") <= 5
        # Each replica keeps its own ledger: 240 calls between them.
        assert a.ledger.count() + b.ledger.count() == 240
    finally:
        a.close()
        b.close()


def test_a_redis_outage_loses_no_telemetry(tmp_path) -> None:
    server = redis_or_skip()
    prefix = f"outage-{uuid.uuid4().hex}"
    try:
        store = RedisStore(server.url, prefix=prefix, directory=tmp_path, socket_timeout_s=0.5)
        t = Tally(POOL, fallback="gpt-4o", store=store, seed=3)
        d = t.route(task_type="qa")
        t.telemetry(d, quality=0.9)
        assert t.flush(10)
        server.stop()
        for _ in range(20):
            t.telemetry(t.route(task_type="qa"), quality=0.9)
        assert not t.flush(1.0)  # the store is down: held, retried, never raised
        assert t.telemetry_counts["retried"] >= 1
        t.close(timeout=0.5)  # what is still unapplied goes to the spool
        server.start()
        with Tally(
            POOL,
            fallback="gpt-4o",
            store=RedisStore(server.url, prefix=prefix, directory=tmp_path),
            seed=4,
        ) as again:
            assert again.flush(10)
            # The 20 outcomes from the outage are learned; the first one was
            # lost with the restarted server, which persists nothing here
            # (Redis's own persistence decides what survives a restart).
            assert sum(s["calls"] for s in again.stats("qa-simple")) == 20
            assert again.ledger.count() == 21
    finally:
        server.stop()
