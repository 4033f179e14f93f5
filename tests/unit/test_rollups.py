"""The hourly roll-ups: kept on append, never doubled, moved by feedback, built
by the migration, and giving the reports the rows give, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import math
import random
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tally_core import InvalidFieldError, Ledger, MemoryStore, Tally, reports
from tally_core.ledger import open_ledger
from tally_core.ledger.query import LedgerQuery

D = datetime(2025, 6, 1, tzinfo=timezone.utc).timestamp()
H = 3600.0
ORGS = ("acme", "beta", "gamma")
TASKS = ("qa-simple", "code-debug", "summarisation", "translation")
PRICES = {"gpt-4o-mini": (0.15, 0.6), "claude-haiku-4-5": (1.0, 5.0), "gpt-4o": (2.5, 10.0)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.sqlite3")
    else:
        yield request.getfixturevalue("pg").create_db()


@pytest.fixture
def led(engine: str) -> Iterator[Ledger]:
    ledger = open_ledger(engine)
    try:
        yield ledger
    finally:
        ledger.close()


def make_rows(n: int, seed: int, days: float = 4.0) -> list[dict[str, Any]]:
    """Calls over ``days``: several orgs, tasks and models, holdout calls on
    gpt-4o, floors, inferred task types, NULL tokens, latencies and qualities."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        model = rng.choice(list(PRICES))
        holdout = model == "gpt-4o" and rng.random() < 0.3
        it = None if rng.random() < 0.03 else rng.randint(50, 4000)
        ot = None if rng.random() < 0.03 else rng.randint(10, 800)
        p = PRICES[model]
        cost = ((it or 0) * p[0] + (ot or 0) * p[1]) / 1e6
        q = None if rng.random() < 0.2 else (
            float(rng.random() < 0.8) if rng.random() < 0.5 else round(rng.random(), 3)
        )
        rows.append({
            "event_id": f"e{seed}-{i}", "decision_id": f"d{seed}-{i}",
            "ts": D + rng.random() * days * 86400, "org": rng.choice(ORGS),
            "task_type": rng.choice(TASKS), "model": model, "holdout": holdout,
            "quality_floor": rng.choice([None, 0.7, 0.8]), "input_tokens": it,
            "output_tokens": ot,
            "cost_usd": None if rng.random() < 0.02 else cost,
            "input_cost_per_mtok": None if rng.random() < 0.05 else p[0],
            "output_cost_per_mtok": p[1],
            "latency_ms": None if rng.random() < 0.05 else rng.lognormvariate(6.0, 1.0),
            "quality": q, "error": "RateLimitError" if rng.random() < 0.04 else None,
            "inferred": rng.choice([None, "task_type", "task_type,complexity", "complexity"]),
        })  # fmt: skip
    return rows


def fill(led: Ledger, n: int = 3000, seed: int = 7) -> list[dict[str, Any]]:
    rows = make_rows(n, seed)
    for k in range(0, n, 257):
        led.append(rows[k : k + 257])
    led.append(rows[:500])  # a replayed batch: already there, must not count again
    rng = random.Random(seed + 1)
    for r in rng.sample(rows, 200):  # late feedback, on calls with and without a quality
        led.set_feedback(r["decision_id"], round(rng.random(), 2), None, r["ts"] + 5.0)
    return rows


def same(a: Any, b: Any, path: str = "") -> None:
    """``a`` equals ``b``: floats to 1e-9 (sums in another order), latency
    percentiles to the sketch's bucket (19%)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k != "source":
                same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        rel = 0.19 if path.endswith(("latency_p50_ms", "latency_p95_ms")) else 1e-9
        assert a == pytest.approx(b, rel=rel, abs=1e-12), path
    else:
        assert a == b, path


QUERIES = [
    {},
    {"org": "beta"},
    {"task_type": "code-debug"},
    {"model": "gpt-4o-mini"},
    {"since": D + 13 * H, "until": D + 61 * H},
    {"since": D + 24 * H, "org": "acme", "task_type": "translation"},
]


@pytest.mark.parametrize("filters", QUERIES)
def test_report_from_rollups_equals_report_from_rows(led: Ledger, filters: dict) -> None:
    fill(led)
    for by in ("auto", "day", "hour"):
        fast = reports.report(led, **filters, by=by, source="rollups")
        slow = reports.report(led, **filters, by=by, source="rows")
        assert (fast.source, slow.source) == ("rollups", "rows")
        assert fast.totals.calls == slow.totals.calls > 0
        same(fast.to_dict(), slow.to_dict())
    # The latency sketch is closer than its bound on a few hundred calls or more.
    t, r = fast.totals, slow.totals
    assert t.latency_p50_ms == pytest.approx(r.latency_p50_ms, rel=0.08)
    assert t.latency_p95_ms == pytest.approx(r.latency_p95_ms, rel=0.08)


@pytest.mark.parametrize("filters", QUERIES[:3] + QUERIES[4:5])
def test_savings_from_rollups_equals_savings_from_rows(led: Ledger, filters: dict) -> None:
    filters = {k: v for k, v in filters.items() if k != "model"}
    fill(led)
    # The fallback's price changes twice: on an hour (the roll-ups price whole
    # hours) and inside one (that hour reads its rows).
    led.record_prices([(D - 86400.0, "gpt-4o", 2.5, 10.0, "map"),
                       (D + 30 * H, "gpt-4o", 2.0, 8.0, "map"),
                       (D + 50 * H + 1234.5, "gpt-4o", 3.0, 12.0, "user")])
    fast = reports.savings(led, **filters, source="rollups", min_obs=5)
    slow = reports.savings(led, **filters, source="rows", min_obs=5)
    assert fast.fallback == slow.fallback == "gpt-4o"
    assert fast.calls == slow.calls > 0 and fast.holdout.holdout_calls > 10
    assert fast.unpriced_calls == slow.unpriced_calls > 0
    same(fast.to_dict(), slow.to_dict())


def test_rollups_count_each_call_once(led: Ledger) -> None:
    rows = make_rows(1000, seed=3)
    assert led.append(rows) == 1000
    assert led.append(rows[::2]) == 0
    assert led.append(rows[:10] + [{**rows[0], "event_id": "fresh"}]) == 1
    rep = reports.report(led, source="rollups")
    assert rep.totals.calls == led.count(LedgerQuery(since=0.0, until=D + 1e6)) == 1001
    assert rep.totals.input_tokens == sum(r["input_tokens"] or 0 for r in rows) + (
        rows[0]["input_tokens"] or 0
    )


def test_feedback_moves_the_rollups(led: Ledger) -> None:
    led.append([{"event_id": "e1", "decision_id": "d1", "ts": D + 10.0, "org": "o",
                 "task_type": "qa-simple", "model": "m", "quality": None},
                {"event_id": "e2", "decision_id": "d2", "ts": D + 20.0, "org": "o",
                 "task_type": "qa-simple", "model": "m", "quality": 1.0}])  # fmt: skip
    led.set_feedback("d1", 0.5, None, D + 30.0)  # no quality before
    led.set_feedback("d2", 0.25, None, D + 40.0)  # replaces 1.0
    led.set_feedback("nobody", 0.1, None, D + 50.0)
    rep = reports.report(led, source="rollups", by="hour")
    assert rep.totals.quality_obs == 2
    assert rep.totals.mean_quality == pytest.approx(0.375)
    sv = reports.savings(led, fallback="m", source="rollups")
    assert sv.per_task[0].models[0]["mean_quality"] == pytest.approx(0.375)


def test_an_older_ledger_is_migrated_and_its_rollups_built(engine: str) -> None:
    led = open_ledger(engine)
    rows = make_rows(800, seed=11)
    led.append(rows)
    expected = reports.report(led, source="rows", by="hour").to_dict()
    led.close()
    _downgrade_to_v1(engine)

    old = open_ledger(engine, readonly=True)  # read as it is: no roll-ups, no inferred
    try:
        assert not old.uses_rollups()
        assert {r["inferred"] for r in old.rows()} == {None}
        assert reports.report(old, by="hour").source == "rows"
        with pytest.raises(InvalidFieldError, match="source"):
            reports.report(old, source="rollups")
    finally:
        old.close()

    upgraded = open_ledger(engine)  # migrates: the column, then the roll-ups from the rows
    try:
        assert upgraded.uses_rollups()
        fast = reports.report(upgraded, source="rollups", by="hour")
        exp = dict(expected, task_mix=fast.to_dict()["task_mix"])
        same(fast.to_dict(), exp)
        assert sum(m["given"] for m in fast.task_mix) == 800  # the rows from before knew none
        upgraded.append([{**rows[0], "event_id": "after", "inferred": "task_type"}])
        assert reports.report(upgraded, source="rollups").totals.calls == 801
    finally:
        upgraded.close()
    again = open_ledger(engine)  # nothing left to migrate: the roll-ups are not rebuilt twice
    try:
        assert again.count() == 801 and reports.report(again, source="rollups").totals.calls == 801
    finally:
        again.close()


def _downgrade_to_v1(where: str) -> None:
    """Make ``where`` look like a ledger written before schema version 2."""
    stmts = ["DROP TABLE rollup_hour", "DROP TABLE rollup_detail",
             "ALTER TABLE calls DROP COLUMN inferred"]
    if where.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(where, autocommit=True) as conn:
            for s in stmts:
                conn.execute(s)
            conn.execute("DELETE FROM tally_ledger_schema")
            conn.execute("INSERT INTO tally_ledger_schema VALUES (1, 0)")
    else:
        db = sqlite3.connect(where)
        for s in [*stmts, "DROP TABLE tally_ledger_schema"]:  # v1 had no version table
            db.execute(s)
        db.commit()
        db.close()


def test_a_short_or_unaligned_range_reads_rows(led: Ledger) -> None:
    fill(led, n=600)
    assert reports.report(led, since=D + 10.0, source="auto").source == "rows"
    assert reports.report(led, by="minute", since=D, until=D + H).source == "rows"
    with pytest.raises(InvalidFieldError, match="source"):
        reports.report(led, since=D + 10.0, source="rollups")
    with pytest.raises(InvalidFieldError, match="source"):
        reports.report(led, source="fast")  # type: ignore[arg-type]
    # Unaligned: the rows, exactly as before.
    a = reports.savings(led, since=D + 10.0, source="auto")
    b = reports.savings(led, since=D + 10.0, source="rows")
    assert a.to_dict() == b.to_dict()


def test_inferred_fields_reach_the_ledger_and_the_task_mix(tmp_path: Path) -> None:
    tally = Tally(["gpt-4o-mini", "gpt-4o"], store=MemoryStore(), ledger=":memory:")
    try:
        for i in range(12):
            d = tally.route({"task_type": "translation" if i % 3 else "qa-simple"})
            if i % 2:
                # what an adapter hands back when it read the task type off the messages
                d = dataclasses.replace(d, inferred=("task_type", "complexity"))
            tally.telemetry(d, success=True, input_tokens=10, output_tokens=5)
        tally.telemetry(model="gpt-4o", task_type="qa-simple", inferred=["task_type"],
                        success=True)
        with pytest.raises(InvalidFieldError, match="inferred"):
            tally.telemetry(model="gpt-4o", task_type="qa-simple", inferred=["the prompt"])
        tally.flush()
        stored = [r["inferred"] for r in tally.ledger.rows()]
        assert stored.count("task_type,complexity") == 6 and stored.count("task_type") == 1
        assert stored.count(None) == 6
        mix = {m["task_type"]: (m["inferred"], m["given"]) for m in tally.report().task_mix}
        assert mix == {"translation": (4, 4), "qa-simple": (3, 2)}
    finally:
        tally.close()


def test_ledger_query_names_the_bad_field() -> None:
    with pytest.raises(InvalidFieldError, match="^until"):
        LedgerQuery(since=10.0, until=10.0)
    with pytest.raises(InvalidFieldError, match="^since"):
        LedgerQuery(since=math.nan)
    with pytest.raises(InvalidFieldError, match="^org"):
        LedgerQuery(org="")
    with pytest.raises(InvalidFieldError, match="^task_type"):
        LedgerQuery(task_type=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidFieldError, match="^since"):
        LedgerQuery.parse(since="last tuesday")
    q = LedgerQuery.parse(since="2025-06-01T10:00", until="2025-06-02")
    assert (q.since, q.until, q.hourly) == (D + 10 * H, D + 2 * 86400, True)
    assert not q.replace(since=D + 1.0).hourly
    with pytest.raises(InvalidFieldError, match="^query"):
        reports.report(Ledger(":memory:"), q, org="acme")


def test_the_command_and_the_dashboard_show_the_task_mix(tmp_path: Path) -> None:
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from tally_core.cli import app
    from tally_core.dashboard.app import create_app
    from tally_core.dashboard.data import DashboardData

    where = tmp_path / "store"
    led = Ledger(where / "ledger.sqlite3")
    rows = make_rows(400, seed=5)
    led.append(rows)
    led.close()
    want = {t: [0, 0] for t in TASKS}
    for r in rows:
        want[r["task_type"]][0 if "task_type" in (r["inferred"] or "").split(",") else 1] += 1
    res = CliRunner().invoke(app, ["report", "--store", str(where), "-f", "json"])
    assert res.exit_code == 0, res.output
    got = {m["task_type"]: [m["inferred"], m["given"]] for m in _json_of(res.stdout)["task_mix"]}
    assert got == want
    table = CliRunner().invoke(app, ["report", "--store", str(where)], env={"COLUMNS": "160"})
    assert "Task mix" in table.stdout
    line = next(s for s in table.stdout.splitlines() if s.strip().startswith("│ code-debug")
                and "inferred" in s)
    assert f"{want['code-debug'][0]:,}" in line
    data = DashboardData(Ledger(where / "ledger.sqlite3", readonly=True))
    with TestClient(create_app(data)) as client:
        page = client.get("/", params={"org": "acme"}).text
        api = client.get("/api/report", params={"org": "acme"}).json()
    assert 'id="task-mix"' in page
    acme = {t: [0, 0] for t in TASKS}
    for r in rows:
        if r["org"] == "acme":
            acme[r["task_type"]][0 if "task_type" in (r["inferred"] or "").split(",") else 1] += 1
    assert {m["task_type"]: [m["inferred"], m["given"]] for m in api["task_mix"]} == acme


def _json_of(text: str) -> Any:
    import json

    return json.loads(text)


def test_a_row_the_engine_cannot_hold_is_left_out_of_the_rollups(led: Ledger) -> None:
    rows = make_rows(40, seed=9)
    rows[7] = {**rows[7], "input_tokens": 2**70}  # beyond 64 bits: the batch goes row by row
    new, bad = led.write(rows)
    assert (new, [i for i, _ in bad]) == (39, [7])
    assert led.write(rows) == (0, bad)  # replayed: nothing new, the same row left out
    rep = reports.report(led, by="hour", source="rollups")
    kept = [r for i, r in enumerate(rows) if i != 7]
    assert rep.totals.calls == 39
    assert rep.totals.input_tokens == sum(r["input_tokens"] or 0 for r in kept)
