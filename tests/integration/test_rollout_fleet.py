"""Rollouts shared by two Tally replicas on one store: a real redis-server, or one disk
directory. Counts from both merge without a lost update, a rollback by one stops the
candidate on the other, and every transition is in the ledger once."""

from __future__ import annotations

import threading
import uuid

import pytest

from tally_core import RedisStore, Tally
from tests.unit.test_rollout import run as serve

POOL = ["gpt-4o-mini", "gpt-4o"]
CAND = "claude-haiku-4-5"


@pytest.fixture(params=["disk", pytest.param("redis", marks=pytest.mark.redis)])
def replicas(request, tmp_path):
    made: list[Tally] = []

    def make(seed: int) -> Tally:
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            prefix = request.node.__dict__.setdefault("prefix", f"ro-{uuid.uuid4().hex}")
            store = RedisStore(url, prefix=prefix, directory=tmp_path / f"home{seed}")
        else:
            store = str(tmp_path / "shared")
        t = Tally(POOL, fallback="gpt-4o", store=store, seed=seed, background=False)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def test_counts_from_two_concurrent_replicas_merge_without_a_lost_update(replicas) -> None:
    a, b = replicas(1), replicas(2)
    a.rollout(CAND, steps=(0.3, 1.0), min_calls=10_000)  # never advances here
    b.refresh()
    assert b.rollouts.models == [CAND]
    served: dict[str, list[str]] = {}

    def run(name: str, t: Tally, seed: int) -> None:
        served[name] = serve(t, 250, {CAND: 0.95}, seed)

    threads = [threading.Thread(target=run, args=("a", a, 3)),
               threading.Thread(target=run, args=("b", b, 4))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    total = served["a"].count(CAND) + served["b"].count(CAND)
    assert served["a"].count(CAND) > 30 and served["b"].count(CAND) > 30  # both served it
    sa, sb = a.rollout_status(CAND), b.rollout_status(CAND)
    assert sa == sb
    (cell,) = sa.values()
    assert cell["calls"] == total and cell["status"] == "running"


def test_a_rollback_by_one_replica_stops_the_candidate_on_the_other(replicas) -> None:
    a, b = replicas(1), replicas(2)
    a.rollout(CAND, steps=(0.3, 1.0), min_calls=200, max_quality_drop=0.02)
    b.refresh()
    assert b.rollouts.share("default", "summarisation", CAND) == 0.3
    served = serve(a, 400, {CAND: 0.7}, 6)  # only A sees it fail, until it rolls back
    (status,) = a.rollout_status(CAND).values()
    assert status["status"] == "rolled-back" and status["share"] == 0.0
    b.refresh()  # what Tally's periodic refresh does
    assert b.rollout_status(CAND) == a.rollout_status(CAND)
    assert CAND not in serve(b, 300, {CAND: 0.7}, 7)
    assert served.index(CAND) < 50
    # The rollback is in the ledger once: written by the replica whose write made it.
    rows = [r for t in {a.ledger.path: a, b.ledger.path: b}.values()
            for r in t.rollout_history(CAND)]
    (row,) = rows
    assert row["action"] == "rolled-back" and row["task_type"] == "summarisation"
    assert row["org"] == "default" and row["step"] == 0 and row["share"] == 0.3
    assert row["quality"] < 0.8 < row["incumbent_quality"]
    assert row["calls"] >= 2 and "rolled back at 30%" in row["reason"]
