"""Reports over a ledger of known calls: every figure against a hand computation."""

from __future__ import annotations

import io
import json
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tally_core import InvalidFieldError, Ledger, Tally, TallyError, reports
from tally_core import catalog as catalog_mod
from tally_core.eval.sim import TallyRouter, load_scenario, simulate
from tally_core.home import StoreDir
from tally_core.ledger import COLUMNS
from tally_core.ledger.query import LedgerQuery

D = datetime(2025, 6, 1, tzinfo=timezone.utc).timestamp()  # a Sunday, 00:00 UTC
H = 3600.0


def _row(i: int, ts: float, org: str, task: str, model: str, it: int, ot: int, **kw: Any) -> dict:
    price = {"gpt-4o-mini": (0.15, 0.6), "gpt-4o": (2.5, 10.0)}[model]
    return {
        "event_id": f"e{i}",
        "decision_id": f"d{i}",
        "ts": ts,
        "org": org,
        "task_type": task,
        "model": model,
        "input_tokens": it,
        "output_tokens": ot,
        "cost_usd": (it * price[0] + ot * price[1]) / 1e6,
        "input_cost_per_mtok": price[0],
        "output_cost_per_mtok": price[1],
        "holdout": 0,
        "success": 1,
        **kw,
    }


#: Five calls over two days; figures below are worked out by hand.
KNOWN = [
    _row(1, D + 1 * H, "acme", "qa-simple", "gpt-4o-mini", 1000, 100, latency_ms=100.0,
         quality=0.9),
    _row(2, D + 2 * H, "acme", "qa-simple", "gpt-4o-mini", 2000, 200, latency_ms=200.0,
         quality=0.8),
    _row(3, D + 3 * H, "acme", "summarisation", "gpt-4o", 1000, 100, latency_ms=300.0,
         quality=1.0, holdout=1, phase="fallback"),
    _row(4, D + 25 * H, "beta", "summarisation", "gpt-4o-mini", 4000, 400, latency_ms=400.0,
         quality=None, success=0, error="RateLimitError"),
    _row(5, D + 26 * H, "beta", "qa-simple", "gpt-4o", 1000, 100, latency_ms=500.0,
         quality=0.6),
]  # fmt: skip


@pytest.fixture
def ledger() -> Ledger:
    led = Ledger(":memory:")
    assert led.append(KNOWN) == 5
    return led


def test_totals_and_rollups_equal_hand_figures(ledger: Ledger) -> None:
    r = reports.report(ledger, by="day")
    t = r.totals
    # costs: 0.00021 + 0.00042 + 0.0035 + 0.00084 + 0.0035
    assert t.calls == 5 and t.cost_usd == pytest.approx(0.00847)
    assert (t.input_tokens, t.output_tokens) == (9000, 900)
    assert t.errors == 1 and t.error_rate == pytest.approx(0.2)
    # latencies 100..500: p50 = 300; p95 = 400 + 0.8 * 100 (linear interpolation)
    assert (t.latency_p50_ms, t.latency_p95_ms) == (pytest.approx(300.0), pytest.approx(480.0))
    assert t.quality_obs == 4 and t.mean_quality == pytest.approx((0.9 + 0.8 + 1.0 + 0.6) / 4)
    assert (r.first_ts, r.last_ts) == (D + H, D + 26 * H)

    models = {m.key: m for m in r.by_model}
    assert [m.key for m in r.by_model] == ["gpt-4o", "gpt-4o-mini"]  # by cost, descending
    big, mini = models["gpt-4o"], models["gpt-4o-mini"]
    assert big.calls == 2 and big.cost_usd == pytest.approx(0.007)
    assert big.cost_share == pytest.approx(0.007 / 0.00847)
    assert (big.latency_p50_ms, big.latency_p95_ms) == (400.0, pytest.approx(490.0))
    assert big.mean_quality == pytest.approx(0.8)
    assert mini.calls == 3 and mini.cost_usd == pytest.approx(0.00147)
    assert (mini.latency_p50_ms, mini.latency_p95_ms) == (200.0, pytest.approx(380.0))
    assert mini.mean_quality == pytest.approx(0.85) and mini.quality_obs == 2
    assert mini.errors == 1 and mini.error_rate == pytest.approx(1 / 3)

    orgs = {o.key: (o.calls, o.cost_usd) for o in r.by_org}
    assert orgs == {"acme": (3, pytest.approx(0.00413)), "beta": (2, pytest.approx(0.00434))}
    assert [o.key for o in r.by_org] == ["beta", "acme"]
    tasks = {x.key: (x.calls, x.cost_usd) for x in r.by_task_type}
    assert tasks == {
        "qa-simple": (3, pytest.approx(0.00413)),
        "summarisation": (2, pytest.approx(0.00434)),
    }
    assert r.bucket == "day"
    assert [(d.key, d.calls, d.start) for d in r.by_time] == [
        ("2025-06-01", 3, D),
        ("2025-06-02", 2, D + 24 * H),
    ]
    assert r.by_time[1].cost_usd == pytest.approx(0.00434)
    assert r.by_time[1].error_rate == pytest.approx(0.5)


def test_quality_history_and_mix(ledger: Ledger) -> None:
    r = reports.report(ledger, by="day")
    q = {(x["task_type"], x["model"]): x for x in r.quality}
    assert q[("qa-simple", "gpt-4o-mini")]["mean_quality"] == pytest.approx(0.85)
    assert q[("summarisation", "gpt-4o-mini")]["quality_obs"] == 0
    assert q[("summarisation", "gpt-4o-mini")]["mean_quality"] is None
    assert q[("qa-simple", "gpt-4o")]["calls"] == 1
    hist = [(h["task_type"], h["model"], h["bucket"], h["calls"]) for h in r.quality_history]
    assert hist == [
        ("qa-simple", "gpt-4o", "2025-06-02", 1),
        ("qa-simple", "gpt-4o-mini", "2025-06-01", 2),
        ("summarisation", "gpt-4o", "2025-06-01", 1),
        ("summarisation", "gpt-4o-mini", "2025-06-02", 1),
    ]
    assert [(b["bucket"], b["calls"], b["models"]) for b in r.mix] == [
        ("2025-06-01", 3, {"gpt-4o": 1, "gpt-4o-mini": 2}),
        ("2025-06-02", 2, {"gpt-4o": 1, "gpt-4o-mini": 1}),
    ]
    hourly = reports.report(ledger, by="hour")
    assert [b.key for b in hourly.by_time] == [
        "2025-06-01 01:00",
        "2025-06-01 02:00",
        "2025-06-01 03:00",
        "2025-06-02 01:00",
        "2025-06-02 02:00",
    ]
    assert reports.report(ledger).bucket == "hour"  # auto: 26 hours -> hourly buckets


def test_filters(ledger: Ledger) -> None:
    def calls(**kw: Any) -> int:
        return reports.report(ledger, **kw).totals.calls

    assert calls(org="acme") == 3
    assert calls(task_type="summarization") == 2  # spelling variants normalise
    assert calls(model="gpt-4o") == 2
    assert calls(since="2025-06-02") == 2
    assert calls(until="2025-06-01") == 3  # a bare date: through the end of that day
    assert calls(until="2025-06-01T02:00") == 1  # until is exclusive
    assert calls(since="2025-06-01T02:00Z", until="2025-06-02T01:00:00+00:00") == 2
    assert calls(since=D + 25 * H, org="beta", task_type="qa-simple") == 1
    assert calls(org="nobody") == 0
    with pytest.raises(InvalidFieldError) as info:
        reports.report(ledger, since="June")
    assert info.value.field == "since"
    with pytest.raises(InvalidFieldError):
        reports.report(ledger, since="2025-06-02", until="2025-06-01T00:00")
    with pytest.raises(InvalidFieldError):
        reports.report(ledger, by="week")  # type: ignore[arg-type]


def test_empty_ledger_gives_empty_results() -> None:
    led = Ledger(":memory:")
    r = reports.report(led)
    assert r.empty and r.totals.calls == 0 and r.totals.latency_p50_ms is None
    assert r.by_model == [] and r.by_time == [] and r.mix == [] and r.quality == []
    json.dumps(r.to_dict())
    s = reports.savings(led)
    assert s.empty and s.fallback is None and s.saved_usd == 0 and s.per_task == []
    assert s.holdout.diff is None
    buf = io.StringIO()
    assert reports.export(led, buf, "csv") == 0
    assert buf.getvalue().strip() == ",".join(c for c, _ in COLUMNS)
    buf = io.StringIO()
    reports.export(led, buf, "json")
    assert json.loads(buf.getvalue()) == []


def _full_rows() -> list[dict[str, Any]]:
    """Rows with every column set (and some NULLs), awkward values included."""
    rows = []
    for i in range(2500):  # more than one export batch
        rows.append(
            {
                "event_id": f"ev-{i}",
                "decision_id": None if i % 7 == 0 else f"dec-{i}",
                "ts": D + i * 0.123456789,
                "org": "acme,inc" if i % 2 else 'say "hi"',
                "task_type": "code-debug",
                "cell": "code|long|2|y",
                "structure_type": "code",
                "context_length": "long",
                "tools_used": i % 3,
                "time_sensitive": i % 2,
                "quality_floor": None if i % 5 == 0 else 0.85,
                "tags": [] if i % 3 == 0 else ["a", "b,c", 'd"e'],
                "model": "gpt-4o-mini",
                "phase": "exploit",
                "confidence": 1 / 3,
                "holdout": i % 2,
                "input_tokens": 1234 + i,
                "output_tokens": 0,
                "latency_ms": 0.1 + i,
                "cost_usd": 1e-7 * i + 1e-9,
                "input_cost_per_mtok": 0.15,
                "output_cost_per_mtok": 0.6,
                "success": 1 - i % 2,
                "quality": None if i % 4 == 0 else 0.1 * (i % 10),
                "slugs": None if i % 2 else ["hallucination", "incomplete"],
                "error": None if i % 2 else "RateLimitError",
                "quality_applied": 0.3,
                "clock": float(i),
                "feedback_ts": None if i % 3 else D + i,
            }
        )
    return rows


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_export_round_trips_every_field(fmt: str, tmp_path: Path) -> None:
    led = Ledger(":memory:")
    led.append(_full_rows())
    original = list(led.rows())
    seen: list[int] = []
    path = tmp_path / f"calls.{fmt}"
    assert reports.export(led, path, fmt, progress=seen.append) == 2500  # type: ignore[arg-type]
    assert seen[-1] == 2500 and 1000 in seen
    back = list(reports.read_export(path, fmt))  # type: ignore[arg-type]
    assert back == original  # every column, every value, the same types
    again = Ledger(":memory:")
    again.append(back)
    assert list(again.rows()) == original
    buf = io.StringIO()
    reports.export(led, buf, fmt, org="acme,inc")  # type: ignore[arg-type]
    buf.seek(0)
    assert [r["event_id"] for r in reports.read_export(buf, fmt)] == [  # type: ignore[arg-type]
        r["event_id"] for r in original if r["org"] == "acme,inc"
    ]
    with pytest.raises(InvalidFieldError):
        reports.export(led, io.StringIO(), "xml")  # type: ignore[arg-type]


def test_rows_page_through_equal_timestamps() -> None:
    led = Ledger(":memory:")
    led.append([{**_row(i, D, "o", "qa-simple", "gpt-4o", 1, 1)} for i in range(2345)])
    assert len({r["event_id"] for r in led.rows(batch_size=100)}) == 2345
    assert led.count(LedgerQuery(org="o", since=D, until=D + 1)) == 2345


# -- savings ------------------------------------------------------------------


def test_savings_counterfactual_uses_the_price_in_force(ledger: Ledger) -> None:
    ledger.sync_prices([("gpt-4o", 2.5, 10.0, "map")], ts=D)
    ledger.sync_prices([("gpt-4o", 5.0, 20.0, "map")], ts=D + 24 * H)  # doubled on day 2
    s = reports.savings(ledger, fallback="gpt-4o")
    # On gpt-4o instead: e1 1000*2.5+100*10 = 3500e-6; e2 7000e-6 (day-1 price);
    # e4 4000*5+400*20 = 28000e-6 (day-2 price); e3 and e5 ran on gpt-4o: actual cost.
    assert s.fallback_cost_usd == pytest.approx(0.0035 + 0.007 + 0.028 + 0.0035 + 0.0035)
    assert s.cost_usd == pytest.approx(0.00847)
    assert s.saved_usd == pytest.approx(0.0455 - 0.00847)
    assert s.saved_share == pytest.approx((0.0455 - 0.00847) / 0.0455)
    assert s.unpriced_calls == 0
    per = {t.task_type: t for t in s.per_task}
    assert per["qa-simple"].fallback_cost_usd == pytest.approx(0.0035 + 0.007 + 0.0035)
    assert per["summarisation"].fallback_cost_usd == pytest.approx(0.0035 + 0.028)

    # A later price change does not rewrite the past.
    ledger.sync_prices([("gpt-4o", 1.0, 4.0, "refresh")], ts=D + 72 * H)
    assert reports.savings(ledger, fallback="gpt-4o").fallback_cost_usd == pytest.approx(0.0455)
    # The fallback is inferred from the holdout calls.
    assert reports.savings(ledger).fallback == "gpt-4o"
    # Without any price history, the catalog's price (2.5/10) stands for every call.
    bare = Ledger(":memory:")
    bare.append(KNOWN)
    assert reports.savings(bare, fallback="gpt-4o").fallback_cost_usd == pytest.approx(
        0.0035 + 0.007 + 0.014 + 0.0035 + 0.0035
    )


def test_price_history_is_recorded_only_on_change() -> None:
    led = Ledger(":memory:")
    assert len(led.sync_prices([("a", 1.0, 2.0, "map"), ("b", 3.0, None, "map")], ts=1.0)) == 1
    assert led.sync_prices([("a", 1.0, 2.0, "user")], ts=2.0) == []
    assert len(led.sync_prices([("a", 1.5, 2.0, "map")], ts=3.0)) == 1
    assert [(p.ts, p.input_cost_per_mtok) for p in led.prices("a")] == [(1.0, 1.0), (3.0, 1.5)]
    assert led.price_at("a", 0.5).input_cost_per_mtok == 1.0  # before any record: the earliest
    assert led.price_at("a", 2.9).input_cost_per_mtok == 1.0
    assert led.price_at("a", 3.0).input_cost_per_mtok == 1.5
    assert led.price_at("zzz", 3.0) is None
    assert led.models() == ["a"]


def test_parity_and_floor_shares() -> None:
    led = Ledger(":memory:")
    rows, i = [], 0

    def add(model: str, n: int, q: float, holdout: int = 0, floor: float = 0.8) -> None:
        nonlocal i
        for _ in range(n):
            i += 1
            rows.append(
                _row(i, D + i, "o", "extraction", model, 100, 10, quality=q, holdout=holdout,
                     quality_floor=floor)
            )  # fmt: skip

    add("gpt-4o", 10, 0.95, holdout=1)  # premium quality 0.95
    add("gpt-4o-mini", 30, 0.94)  # within 0.02: at parity, and above the 0.8 floor
    add("gpt-4o-mini", 10, 0.94, floor=0.97)  # same model, but these calls' floor is 0.97
    led.append(rows)
    s = reports.savings(led, fallback="gpt-4o", min_obs=10)
    (t,) = s.per_task
    assert t.premium_quality == pytest.approx(0.95)
    assert t.parity_model == "gpt-4o-mini"
    assert t.parity_share == pytest.approx(40 / 50) and s.parity_share == pytest.approx(0.8)
    assert t.at_floor_share == pytest.approx(30 / 50)
    assert reports.savings(led, fallback="gpt-4o", tolerance=0.005).parity_share == 0.0


def test_holdout_interval_is_welch() -> None:
    # Equal sizes and variances: Welch's df = 2 (n - 1) = 6, t(0.975, 6) = 2.446912.
    routed, held = [0.6, 0.8, 0.8, 1.0], [0.5, 0.7, 0.7, 0.9]
    led = Ledger(":memory:")
    led.append(
        [_row(i, D + i, "o", "qa-simple", "gpt-4o-mini", 1, 1, quality=q)
         for i, q in enumerate(routed)]
        + [_row(10 + i, D + 10 + i, "o", "qa-simple", "gpt-4o", 1, 1, quality=q, holdout=1)
           for i, q in enumerate(held)]
    )  # fmt: skip
    h = reports.savings(led, fallback="gpt-4o").holdout
    se = math.sqrt(statistics.variance(routed) / 4 + statistics.variance(held) / 4)
    assert h.diff == pytest.approx(0.1)
    assert h.df == pytest.approx(6.0)
    assert h.ci_high - h.diff == pytest.approx(2.446912 * se, rel=1e-3)
    assert (h.routed_calls, h.holdout_calls) == (4, 4)
    assert "Welch" in h.method


def test_pass_fail_scores_use_agresti_caffo() -> None:
    # All-pass holdout: no sample variance, so Welch would give a zero-width
    # interval. Agresti-Caffo: (3+1)/(4+2) - (4+1)/(4+2) +- z * se.
    led = Ledger(":memory:")
    led.append(
        [_row(i, D + i, "o", "qa-simple", "gpt-4o-mini", 1, 1, quality=q)
         for i, q in enumerate([1.0, 1.0, 1.0, 0.0])]
        + [_row(10 + i, D + 10 + i, "o", "qa-simple", "gpt-4o", 1, 1, quality=1.0, holdout=1)
           for i in range(4)]
    )  # fmt: skip
    h = reports.savings(led, fallback="gpt-4o").holdout
    pr, ph = 4 / 6, 5 / 6
    half = 1.959964 * math.sqrt(pr * (1 - pr) / 6 + ph * (1 - ph) / 6)
    assert h.diff == pytest.approx(-0.25)  # the raw difference
    assert (h.ci_low, h.ci_high) == (
        pytest.approx(pr - ph - half, rel=1e-5),
        pytest.approx(pr - ph + half, rel=1e-5),
    )


def test_savings_holdout_matches_the_simulators_truth() -> None:
    """Tally with a 10% holdout on the seed workload, four seeded streams: the
    measured routed-minus-holdout quality difference brackets the true one
    (from the scenario's true qualities of the models actually chosen) within
    its 95% interval, overall and per task type, at the rate such an
    interval should (graded outcomes are clipped to [0, 1], so a premium
    model's observed mean sits a little under its true quality: a truth at
    the interval's edge can fall just outside)."""
    sc = load_scenario("seed-landscape")
    inside, total, overall_inside = 0, 0, 0
    for seed in (7, 8, 9, 10):
        router = TallyRouter(sc, seed=seed, holdout=0.1)
        simulate(sc, [router], seed=seed, calls=4000)
        s = router.tally.savings()
        rows = list(router.tally.ledger.rows())
        router.close()
        truth: dict[str, float] = {}
        for t in s.per_task:
            q = sc.tasks[t.task_type].quality
            routed = [
                q[r["model"]] for r in rows if r["task_type"] == t.task_type and not r["holdout"]
            ]
            truth[t.task_type] = sum(routed) / len(routed) - q[sc.fallback]
        weights = {t.task_type: t.holdout.routed_calls for t in s.per_task}
        overall = sum(weights[k] * v for k, v in truth.items()) / sum(weights.values())
        h = s.holdout
        assert h.holdout_calls == pytest.approx(0.1 * 4000, rel=0.15)
        assert h.ci_high - h.ci_low < 0.05
        overall_inside += h.ci_low <= overall <= h.ci_high
        inside += sum(
            t.holdout.ci_low <= truth[t.task_type] <= t.holdout.ci_high for t in s.per_task
        )
        total += len(s.per_task)
        # Routing pays for its savings with quality it is allowed to spend
        # (floors of 0.8-0.85 against a 0.93-0.97 premium): the interval says how much.
        assert h.ci_high < 0 and s.saved_share > 0.5 and s.at_floor_share > 0.6
    assert overall_inside >= 3, overall_inside
    assert inside >= 0.84 * total, (inside, total)


# -- Tally and the store ------------------------------------------------------


def _fake_map(**prices: tuple[float, float]) -> bytes:
    raw: dict[str, Any] = {
        "sample_spec": {"mode": "one of: chat, embedding", "input_cost_per_token": 0.0},
    }
    for i in range(10):
        raw[f"filler-{i}"] = {
            "input_cost_per_token": 1e-6,
            "output_cost_per_token": 2e-6,
            "litellm_provider": "x",
            "mode": "chat",
        }
    for name, (inp, out) in prices.items():
        raw[name] = {
            "input_cost_per_token": inp / 1e6,
            "output_cost_per_token": out / 1e6,
            "max_input_tokens": 128000,
            "supports_function_calling": True,
            "litellm_provider": "openai",
            "mode": "chat",
        }
    return json.dumps(raw).encode()


def test_tally_records_prices_and_uses_a_refreshed_map(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with Tally(["gpt-4o-mini", "gpt-4o"], store=store, seed=1, background=False) as t:
        d = t.route(task_type="qa-simple")
        t.telemetry(d, quality=0.9, input_tokens=1000, output_tokens=100)
        first = t.savings()
        assert t.report().totals.calls == 1
        assert t.export(io.StringIO(), "csv") == 1
    led = Ledger(StoreDir(store).ledger)
    recorded = {p.model: p for p in led.prices()}
    assert recorded["gpt-4o"].input_cost_per_mtok == pytest.approx(2.5)
    assert recorded["gpt-4o"].source.startswith("litellm-map:")

    fetched: list[str] = []

    def fetch(url: str, timeout: float) -> bytes:
        fetched.append(url)
        return _fake_map(**{"gpt-4o": (1.0, 4.0), "gpt-4o-mini": (0.15, 0.6)})

    changes = reports.refresh_prices(store, led, fetch=fetch)
    assert fetched == [catalog_mod.PRICE_MAP_URL]
    assert [(c["model"], c["old_input_cost_per_mtok"], c["input_cost_per_mtok"])
            for c in changes] == [("gpt-4o", 2.5, 1.0)]  # fmt: skip
    assert StoreDir(store).price_map.is_file()
    led.close()

    with Tally(["gpt-4o-mini", "gpt-4o"], store=store, seed=1, background=False) as t:
        assert t.catalog["gpt-4o"].input_cost_per_mtok == pytest.approx(1.0)
        assert t.catalog.price_source("gpt-4o").startswith("refreshed-map:")
        # Past reports do not change: the old call keeps the price of its time.
        assert t.savings().fallback_cost_usd == pytest.approx(first.fallback_cost_usd)
        assert len(t.ledger.prices("gpt-4o")) == 2  # nothing new: the refresh recorded it

    rows = reports.pricing(["gpt-4o", "my-model"], ledger=Ledger(StoreDir(store).ledger),
                           price_map=StoreDir(store).price_map)  # fmt: skip
    assert rows[0].source.startswith("refreshed-map:") and rows[0].changes == 2
    assert rows[0].input_cost_per_mtok == pytest.approx(1.0)
    assert rows[1].source == "unknown"


def test_refresh_failures_are_one_line(tmp_path: Path) -> None:
    def offline(url: str, timeout: float) -> bytes:
        return catalog_mod.fetch_price_map("http://127.0.0.1:9/map.json", timeout=2.0)

    with pytest.raises(TallyError) as info:
        reports.refresh_prices(tmp_path, None, fetch=offline)
    assert "cannot download the price map" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InvalidFieldError):
        reports.refresh_prices(tmp_path, None, fetch=lambda u, t: b'{"a": 1}')
    with pytest.raises(InvalidFieldError):
        reports.refresh_prices(tmp_path, None, fetch=lambda u, t: b"<html>")
    assert not StoreDir(tmp_path).price_map.exists()


def test_user_prices_are_not_overridden_by_a_refresh(tmp_path: Path) -> None:
    led = Ledger(StoreDir(tmp_path).ledger)
    led.sync_prices([("gpt-4o", 2.0, 8.0, "user")], ts=1.0)
    fake = _fake_map(**{"gpt-4o": (1.0, 4.0)})
    assert reports.refresh_prices(tmp_path, led, fetch=lambda u, t: fake, now=2.0) == []


def test_readonly_ledger(tmp_path: Path) -> None:
    with pytest.raises(TallyError):
        Ledger(tmp_path / "missing.sqlite3", readonly=True)
    assert not (tmp_path / "missing.sqlite3").exists()
    Ledger(tmp_path / "l.sqlite3").append(KNOWN)
    ro = Ledger(tmp_path / "l.sqlite3", readonly=True)
    assert reports.report(ro).totals.calls == 5
    with pytest.raises(TallyError):
        ro.append([{**KNOWN[0], "event_id": "new"}])
