"""The ledger on a real PostgreSQL server: the same contract as SQLite, and a fleet.

One server for the module (``tests/postgres_support.py``: initdb into a
temporary directory, a free loopback port), a fresh database per test.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import redis_or_skip
from tally_core import MemoryStore, RedisStore, StoreError, Tally, reports
from tally_core.home import StoreDir
from tally_core.ledger import Ledger, open_ledger
from tally_core.ledger.query import LedgerQuery
from tests.postgres_support import PASSWORD, PostgresServer, free_port

pytestmark = pytest.mark.postgres

POOL = ["gpt-4o-mini", "gpt-4o"]


@pytest.fixture(params=["sqlite", "postgres"])
def led(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        ledger = Ledger(StoreDir(tmp_path).ledger)
    else:
        ledger = open_ledger(request.getfixturevalue("pg").create_db())
    try:
        yield ledger
    finally:
        ledger.close()


def row(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": f"e{i}", "decision_id": f"d{i}", "ts": 1000.0 + i // 2, "org": "acme",
        "task_type": "qa-simple", "model": "gpt-4o-mini" if i % 3 else "gpt-4o",
        "holdout": i % 5 == 0, "success": True, "quality": 0.5 + (i % 5) / 10,
        "slugs": ["incomplete"] if i % 4 == 0 else None, "input_tokens": 100 + i,
        "output_tokens": 10, "latency_ms": 20.0 + i, "cost_usd": 0.001 * (i + 1),
        "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6, "tools_used": 0,
        "time_sensitive": False,
    }
    base.update(kw)
    return base


# -- the contract, on both engines ------------------------------------------------------


def test_a_replayed_batch_never_doubles(led: Ledger) -> None:
    batch = [row(i) for i in range(50)]
    assert led.append(batch) == 50
    assert led.append(batch) == 0  # the queue retried it after an outage
    assert led.append([row(49), row(50), row(51), row(50)]) == 2  # a duplicate in one batch too
    assert led.count() == 52
    got = led.get("d4")
    assert got is not None
    assert (got["model"], got["slugs"], got["holdout"], got["success"]) == (
        "gpt-4o-mini", ["incomplete"], 0, 1,
    )
    assert got["ts"] == 1002.0 and got["cost_usd"] == pytest.approx(0.005, abs=1e-15)


def test_rows_page_in_time_order_through_ties_and_filter(led: Ledger) -> None:
    led.append([row(i, org="acme" if i % 2 else "beta") for i in range(101)])
    ids = [r["event_id"] for r in led.rows(batch_size=7)]  # pages split the ts ties
    assert ids == [f"e{i}" for i in range(101)]
    beta = LedgerQuery(org="beta", since=1010.0, until=1013.0)
    assert [r["event_id"] for r in led.rows(beta)] == [
        "e20", "e22", "e24",
    ]
    assert led.count(LedgerQuery(org="acme", model="gpt-4o")) == sum(
        1 for i in range(101) if i % 2 and i % 3 == 0
    )
    assert led.span(LedgerQuery(task_type="qa-simple")) == (101, 1000.0, 1050.0)
    assert list(led.select(["model", "quality"], LedgerQuery(until=1001.0))) == [
        ("gpt-4o", 0.5), ("gpt-4o-mini", 0.6),
    ]


def test_model_summary_counts_holdout_and_highest_price(led: Ledger) -> None:
    led.append([row(i, input_cost_per_mtok=0.1 * (i % 4)) for i in range(30)])
    summary = led.model_summary(LedgerQuery(org="acme"))
    big = [i for i in range(30) if i % 3 == 0]
    assert summary["gpt-4o"] == (len(big), sum(1 for i in big if i % 5 == 0),
                                 pytest.approx(0.6 + 0.3))
    assert sum(n for n, _, _ in summary.values()) == 30
    assert led.model_summary(LedgerQuery(org="nobody")) == {}


def test_feedback_updates_the_decisions_latest_call(led: Ledger) -> None:
    led.append([row(1), row(2, decision_id="d1", ts=2000.0)])
    led.set_feedback("d1", 0.25, ["hallucination"], 3000.0)
    later, earlier = led.get("d1"), [r for r in led.rows() if r["event_id"] == "e1"][0]
    assert later is not None
    assert (later["event_id"], later["quality"], later["quality_applied"]) == ("e2", 0.25, 0.25)
    assert (later["slugs"], later["feedback_ts"]) == (["hallucination"], 3000.0)
    assert earlier["quality"] == 0.6 and earlier["feedback_ts"] is None


def test_prices_are_recorded_once_per_change(led: Ledger) -> None:
    assert len(led.sync_prices([("m", 1.0, 2.0, "map"), ("n", None, 1.0, "map")], ts=10.0)) == 1
    assert led.sync_prices([("m", 1.0, 2.0, "map")], ts=20.0) == []
    assert [r.input_cost_per_mtok for r in led.sync_prices([("m", 3.0, 2.0, "user")], ts=30.0)] \
        == [3.0]
    price_then, price_now = led.price_at("m", 25.0), led.price_at("m", 31.0)
    assert price_then is not None and price_now is not None
    assert (price_then.input_cost_per_mtok, price_now.source) == (1.0, "user")
    led.append([row(0)])
    assert led.models() == ["gpt-4o", "m"]


def test_a_row_the_engine_cannot_hold_is_left_out_alone(led: Ledger) -> None:
    new, bad = led.write([row(0), row(1, input_tokens=2**70), row(2)])
    assert new == 2 and [i for i, _ in bad] == [1]
    assert [r["event_id"] for r in led.rows()] == ["e0", "e2"]
    assert led.write([row(3), row(4)]) == (2, [])  # the next batch is unaffected
    led.record_rejected([(5.0, "e1", "d1", "ledger", bad[0][1])])
    assert [(r["event_id"], r["field"]) for r in led.rejected()] == [("e1", "ledger")]


# -- PostgreSQL only ----------------------------------------------------------------


def test_schema_is_versioned_and_a_newer_one_is_refused(pg: PostgresServer) -> None:
    import psycopg

    url = pg.create_db()
    open_ledger(url).close()
    open_ledger(url).close()  # a second replica starting: no error, one version row
    with psycopg.connect(url, autocommit=True) as conn:
        # A new ledger starts at the current version (no steps to replay).
        assert conn.execute("SELECT version FROM tally_ledger_schema").fetchall() == [(3,)]
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")}
        assert {"calls_decision", "calls_ts", "calls_pkey", "rollup_hour_pkey",
                "rollup_detail_pkey"} <= indexes
        conn.execute("INSERT INTO tally_ledger_schema VALUES (99, 0)")
    with pytest.raises(StoreError, match="schema version 99"):
        open_ledger(url)


def test_readonly_needs_an_existing_ledger(pg: PostgresServer) -> None:
    with pytest.raises(StoreError, match="not a Tally ledger"):
        open_ledger(pg.create_db(), readonly=True)


def test_an_unreachable_server_is_a_store_error_naming_it_not_the_password() -> None:
    port = free_port()
    url = f"postgresql://tally:{PASSWORD}@127.0.0.1:{port}/calls"
    with pytest.raises(StoreError) as err:
        open_ledger(url)
    assert f"127.0.0.1:{port}/calls" in str(err.value)
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value)


def test_server_stopped_and_restarted_mid_stream_every_event_once(
    pg: PostgresServer, tmp_path: Path
) -> None:
    url = pg.create_db()
    t = Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "home"), ledger=url, seed=7)
    sent = []
    try:
        for i in range(600):
            if i == 200:
                assert t.flush(10)
                pg.stop()
            if i == 400:
                # Restart only once the worker has met the outage (a failed batch).
                deadline = time.monotonic() + 20
                while t.telemetry_counts["retried"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert t.telemetry_counts["retried"] >= 1
                pg.start()
            d = t.route(task_type="qa", org="acme")
            t.telemetry(d, quality=0.9, input_tokens=100, output_tokens=10)
            sent.append(d.decision_id)
        assert t.flush(30)
        ids = [r["decision_id"] for r in t.ledger.rows()]
        assert len(ids) == 600 and set(ids) == set(sent)
        assert sum(s["calls"] for s in t.stats("qa-simple", org="acme")) == 600
    finally:
        if not (pg.data / "postmaster.pid").exists():
            pg.start()
        t.close()


def test_a_stop_with_the_queue_spooled_replays_in_a_new_process(
    pg: PostgresServer, tmp_path: Path
) -> None:
    url, home = pg.create_db(), str(tmp_path / "home")
    t = Tally(POOL, fallback="gpt-4o", store=home, ledger=url, seed=8)
    try:
        pg.stop()
        for _ in range(50):
            t.telemetry(t.route(task_type="qa"), quality=0.8)
        assert not t.flush(1.0)
        t.close(timeout=0.5)  # still unrecorded: spooled
    finally:
        pg.start()
    with Tally(POOL, fallback="gpt-4o", store=home, ledger=url, seed=9) as again:
        assert again.flush(20)
        assert again.ledger.count() == 50


def test_two_orgs_reports_never_mix(pg: PostgresServer) -> None:
    url = pg.create_db()
    with Tally(POOL, fallback="gpt-4o", store=":memory:", ledger=url, background=False,
               seed=1) as t:
        for i in range(30):
            org, cost = ("acme", 0.01) if i % 3 else ("beta", 0.5)
            t.telemetry(t.route(task_type="qa", org=org), quality=0.9, cost_usd=cost, org=org)
        acme, beta = t.report(org="acme"), t.report(org="beta")
        assert (acme.totals.calls, beta.totals.calls) == (20, 10)
        assert acme.totals.cost_usd == pytest.approx(0.2)
        assert beta.totals.cost_usd == pytest.approx(5.0)
        assert [r.key for r in acme.by_org] == ["acme"] and [r.key for r in beta.by_org] == [
            "beta"
        ]


def test_a_report_over_three_replicas_is_the_sum_of_their_calls(pg: PostgresServer) -> None:
    url = pg.create_db()
    replicas = [
        Tally(POOL, fallback="gpt-4o", store=MemoryStore(), ledger=url, background=False,
              seed=s)
        for s in range(3)
    ]
    sent = [(0, 0.0, 0)] * 3
    try:
        for k, t in enumerate(replicas):
            n, cost, tokens = 0, 0.0, 0
            for i in range(40 + 25 * k):
                c, tok = 0.001 * (k + 1) * (1 + i % 4), 100 + 10 * k + i
                t.telemetry(t.route(task_type="qa"), quality=0.9, cost_usd=c,
                            input_tokens=tok, output_tokens=5)
                n, cost, tokens = n + 1, cost + c, tokens + tok
            sent[k] = (n, cost, tokens)
        rep = replicas[0].report()
        assert rep.totals.calls == sum(n for n, _, _ in sent) == 40 + 65 + 90
        assert rep.totals.cost_usd == pytest.approx(sum(c for _, c, _ in sent))
        assert rep.totals.input_tokens == sum(tok for _, _, tok in sent)
        assert replicas[2].report().totals == rep.totals  # every replica reads the same log
    finally:
        for t in replicas:
            t.close()


def _fleet_worker(url: str, redis_url: str, prefix: str, home: str, k: int, n: int) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    store = RedisStore(redis_url, prefix=prefix, directory=home)
    with Tally(POOL, fallback="gpt-4o", store=store, ledger=url, seed=k) as t:
        for _ in range(n):
            d = t.route(task_type="qa")
            t.telemetry(d, quality=0.9, input_tokens=50, output_tokens=5)
        if not t.flush(60):
            raise SystemExit(3)


def test_four_processes_write_one_ledger_and_one_state(
    pg: PostgresServer, tmp_path: Path
) -> None:
    server = redis_or_skip()
    url, prefix = pg.create_db(), f"fleet-{uuid.uuid4().hex}"
    open_ledger(url).close()
    ctx = mp.get_context("spawn")  # a clean interpreter per replica, as in a fleet
    try:
        procs = [
            ctx.Process(target=_fleet_worker,
                        args=(url, server.url, prefix, str(tmp_path / f"r{k}"), k, 2000))
            for k in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        led = open_ledger(url, readonly=True)
        try:
            assert led.uses_rollups()  # count() sums the roll-ups four writers kept
            assert led.count() == 8000
            assert len({r[0] for r in led.select(["event_id"])}) == 8000
            quality = reports.report(led, by="hour", source="rollups").totals
            assert (quality.calls, quality.quality_obs) == (8000, 8000)
            assert quality.input_tokens == 50 * 8000
        finally:
            led.close()
        store = RedisStore(server.url, prefix=prefix, directory=tmp_path / "reader")
        with Tally(POOL, fallback="gpt-4o", store=store, ledger=url) as reader:
            assert sum(s["calls"] for s in reader.stats("qa-simple")) == 8000
    finally:
        server.stop()


def test_cli_reports_read_the_shared_ledger(pg: PostgresServer) -> None:
    import json

    from typer.testing import CliRunner

    from tally_core import reports
    from tally_core.cli import app
    from tests.unit.test_reports import KNOWN

    url = pg.create_db()
    led = open_ledger(url)
    led.append(KNOWN)
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--store", url, "--format", "json", "--by", "day"])
    assert res.exit_code == 0, res.output
    want = json.loads(json.dumps(reports.report(led, by="day").to_dict(), default=str))
    assert json.loads(res.stdout) == want and want["totals"]["calls"] == len(KNOWN)
    res = runner.invoke(app, ["savings", "--store", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(
        json.dumps(reports.savings(led).to_dict(), default=str)
    )
    empty = pg.create_db()
    open_ledger(empty).close()
    for cmd in ("report", "savings"):  # "No calls in <where>": the URL without its password
        res = runner.invoke(app, [cmd, "--store", empty])
        assert res.exit_code == 0 and "No calls in" in res.output, res.output
        assert PASSWORD not in res.output and "127.0.0.1" in res.output
    res = runner.invoke(app, ["export", "--store", url, "--format", "jsonl"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == len(KNOWN)
    led.close()
    bad = url.rsplit("/", 1)[0] + "/no_such_db"
    res = runner.invoke(app, ["report", "--store", bad])
    assert res.exit_code == 2 and "unreachable" in res.output and PASSWORD not in res.output


def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'tally-router\[postgres\]'"):
        open_ledger("postgresql://tally@127.0.0.1:1/x")


def _child_writes(led: Ledger, q: mp.Queue) -> None:
    led.append([row(i) for i in range(100, 110)])
    q.put(led._conn.info.backend_pid)  # type: ignore[attr-defined]


def test_a_forked_child_opens_its_own_connection(pg: PostgresServer) -> None:
    led = open_ledger(pg.create_db())
    try:
        led.append([row(0)])
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        child = ctx.Process(target=_child_writes, args=(led, q))
        child.start()
        child_backend = q.get(timeout=30)
        child.join(30)
        assert child.exitcode == 0
        assert child_backend != led._conn.info.backend_pid  # type: ignore[attr-defined]
        led.append([row(1)])  # the parent's connection survived the child's exit
        assert led.count() == 12
    finally:
        led.close()


def test_a_replicas_sqlite_ledger_moves_into_the_shared_one(
    pg: PostgresServer, tmp_path: Path
) -> None:
    from tally_core.ledger import copy_ledger

    old = Ledger(StoreDir(tmp_path).ledger)
    old.append([row(i) for i in range(2500)])
    old.sync_prices([("gpt-4o", 2.5, 10.0, "map")], ts=5.0)
    old.record_rejected([(1.0, "e-bad", None, "quality", "must be 0-1")])
    shared = open_ledger(pg.create_db())
    try:
        assert copy_ledger(old, shared, batch_size=1000) == 2500
        assert copy_ledger(old, shared) == 0  # run again: nothing doubles
        assert shared.count() == 2500 and shared.prices() == old.prices()
        assert [r["event_id"] for r in shared.rejected()] == ["e-bad"]
        assert list(shared.rows()) == list(old.rows())
    finally:
        old.close()
        shared.close()


def test_rollout_transitions_are_recorded_once_and_filtered(led: Ledger) -> None:
    from tally_core.events import rollout_event

    evs = [rollout_event(model=m, org="acme", task_type="qa", action=a, step=s, share=sh,
                         calls=40, quality=q, incumbent_quality=0.93, reason=f"{a} at {sh:.0%}",
                         ts=1000.0 + i)
           for i, (m, a, s, sh, q) in enumerate([("m1", "advanced", 0, 0.05, 0.94),
                                                 ("m1", "rolled-back", 1, 0.25, 0.71),
                                                 ("m2", "done", 0, 1.0, 0.95)])]
    led.record_rollouts(evs)
    led.record_rollouts(evs[:2])  # a replayed batch adds nothing
    got = led.rollouts(model="m1")
    assert [(r["action"], r["step"], r["share"]) for r in got] == [
        ("advanced", 0, 0.05), ("rolled-back", 1, 0.25)]
    assert got[1]["quality"] == 0.71 and got[1]["incumbent_quality"] == 0.93
    assert got[1]["task_type"] == "qa-simple" and got[1]["org"] == "acme"
    assert len(led.rollouts()) == 3 and led.rollouts(org="other") == []
