"""Reports at scale: generate a ledger of N calls, then time report, savings and export.

Generation goes through ``Ledger.write`` (the path the recorder takes, so the
hourly roll-ups are kept as in production) in batches of ``--batch`` rows:
N calls spread evenly over ``--days`` days ending at today's midnight (UTC),
3 orgs x 6 task types x 4 models, holdout calls on the fallback, floors,
inferred task types, NULL tokens, latencies and qualities, seeded.

Then, ``--runs`` times each: ``reports.report`` and ``reports.savings`` for the
last 30 days (``--since`` a bare date, as ``tally report --since`` takes it)
on a freshly opened read-only ledger, and the same through the command
(``tally report/savings --store ... --since ... -f json``, wall time of the
process, Python's start included). With ``--rows-path`` also the rows path
(``source="rows"``, what every report did before the roll-ups) once. With
``--export`` the peak RSS of ``tally export -f jsonl -o /dev/null`` (GNU time).

    python tools/bench_reports.py --engine sqlite --rows 1000000 --path /tmp/l1m.sqlite3
    python tools/bench_reports.py --engine postgres --rows 1000000 --export

An existing SQLite ``--path`` holding ``--rows`` calls is reused (not
regenerated). PostgreSQL: a private server (Debian's binaries, as the tests
start it, fsync off) for the run, removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tally_core import reports  # noqa: E402
from tally_core.ledger import Ledger, open_ledger  # noqa: E402
from tally_core.ledger.query import LedgerQuery  # noqa: E402

ORGS = ("acme", "beta", "gamma")
TASKS = ("qa-simple", "code-debug", "summarisation", "extraction", "translation", "reasoning")
FLOORS = {"qa-simple": 0.7, "code-debug": 0.85, "summarisation": 0.8, "extraction": None,
          "translation": 0.8, "reasoning": 0.9}
PRICES = {"gpt-4o-mini": (0.15, 0.6), "claude-haiku-4-5": (1.0, 5.0),
          "claude-sonnet-4-5": (3.0, 15.0), "gpt-4o": (2.5, 10.0)}
FALLBACK = "gpt-4o"


def generate(led: Ledger, n: int, days: int, end: float, batch: int, seed: int) -> float:
    """Write ``n`` calls; returns the seconds it took."""
    models = list(PRICES)
    step = days * 86400 / n
    start = end - days * 86400
    t0 = time.perf_counter()
    done = 0
    led.record_prices((start - 86400, m, p[0], p[1], "bench") for m, p in PRICES.items())
    while done < n:
        k = min(batch, n - done)
        rng = random.Random(seed * 1_000_003 + done)
        rows = []
        for i in range(done, done + k):
            model = models[int(rng.random() * 4)]
            task = TASKS[int(rng.random() * 6)]
            p = PRICES[model]
            it = int(rng.lognormvariate(6.5, 1.0)) if rng.random() > 0.01 else None
            ot = int(rng.lognormvariate(5.0, 0.8)) if rng.random() > 0.01 else None
            r = rng.random()
            rows.append({
                "event_id": f"b{seed}-{i}", "decision_id": f"d{seed}-{i}",
                "ts": start + (i + rng.random()) * step, "org": ORGS[int(r * 3)],
                "task_type": task, "cell": "*", "model": model, "phase": "exploit",
                "holdout": model == FALLBACK and r < 0.2, "quality_floor": FLOORS[task],
                "input_tokens": it, "output_tokens": ot,
                "latency_ms": rng.lognormvariate(6.8, 0.7) if r > 0.02 else None,
                "cost_usd": ((it or 0) * p[0] + (ot or 0) * p[1]) / 1e6,
                "input_cost_per_mtok": p[0], "output_cost_per_mtok": p[1],
                "success": r > 0.02, "error": "RateLimitError" if r <= 0.02 else None,
                "quality": (rng.random() ** 0.3) if r < 0.8 else None,
                "inferred": "task_type,complexity" if rng.random() < 0.4 else None,
            })  # fmt: skip
        new, bad = led.write(rows)
        assert new == k and not bad, (new, bad)
        done += k
    return time.perf_counter() - t0


def _dist(xs: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
    return {"mean": round(statistics.fmean(xs), 4), "p10": round(qs[0], 4),
            "p90": round(qs[-1], 4), "n": len(xs)}


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _cli(args: list[str]) -> float:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tally_core.cli", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _export_rss(store: str) -> dict[str, float]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    t0 = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "tally_core.cli", "export", "--store",
         store, "-f", "jsonl", "-o", "/dev/null"],
        check=True, env=env, capture_output=True, text=True,
    )
    secs = time.perf_counter() - t0
    rss = next(int(line.split()[-1]) for line in out.stderr.splitlines()
               if "Maximum resident set size" in line)
    return {"peak_rss_mb": round(rss / 1024, 1), "seconds": round(secs, 1)}


def bench(where: str, since: str, runs: int, rows_path: bool, export: bool) -> dict[str, Any]:
    q = LedgerQuery.parse(since=since)
    out: dict[str, Any] = {}
    rep_t, sav_t, check = [], [], None
    for _ in range(runs):
        led = open_ledger(where, readonly=True)
        try:
            t, rep = _timed(lambda led=led: reports.report(led, q))
            rep_t.append(t)
            t, sv = _timed(lambda led=led: reports.savings(led, q))
            sav_t.append(t)
            check = (rep.source, sv.source, rep.totals.calls, round(sv.saved_share, 4))
        finally:
            led.close()
    out["report_s"], out["savings_s"] = _dist(rep_t), _dist(sav_t)
    out["source_report_savings_calls_saved"] = check
    store = where
    out["cli_report_s"] = _dist([_cli(["report", "--store", store, "--since", since, "-f",
                                       "json"]) for _ in range(runs)])
    out["cli_savings_s"] = _dist([_cli(["savings", "--store", store, "--since", since, "-f",
                                        "json"]) for _ in range(runs)])
    if rows_path:
        led = open_ledger(where, readonly=True)
        try:
            t1, slow = _timed(lambda: reports.report(led, q, source="rows"))
            t2, slow_sv = _timed(lambda: reports.savings(led, q, source="rows"))
            out["rows_path_report_s"], out["rows_path_savings_s"] = round(t1, 2), round(t2, 2)
            fast = reports.report(led, q)
            out["rows_vs_rollups_same_calls_cost"] = (
                slow.totals.calls == fast.totals.calls
                and abs(slow.totals.cost_usd - fast.totals.cost_usd) <= 1e-9 * slow.totals.cost_usd
                and abs(slow_sv.saved_usd - reports.savings(led, q).saved_usd)
                <= 1e-9 * abs(slow_sv.saved_usd)
            )
            out["p95_sketch_vs_exact"] = (fast.totals.latency_p95_ms, slow.totals.latency_p95_ms)
        finally:
            led.close()
    if export:
        out["export"] = _export_rss(store)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--path", default="/tmp/tally-bench-ledger.sqlite3", help="SQLite file")
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--rows-path", action="store_true", help="also time source='rows' once")
    ap.add_argument("--export", action="store_true", help="peak RSS of tally export")
    args = ap.parse_args()
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    end = today.timestamp()
    since = (today - timedelta(days=30)).date().isoformat()
    result: dict[str, Any] = {"engine": args.engine, "rows": args.rows, "since": since}
    server = None
    try:
        if args.engine == "postgres":
            from tests.postgres_support import PostgresServer

            server = PostgresServer()
            server.start()
            where = server.create_db()
            led: Ledger = open_ledger(where)
            result["generate_s"] = round(generate(led, args.rows, args.days, end, args.batch,
                                                  args.seed), 1)
            led.close()
        else:
            where = args.path
            have = Ledger(where, readonly=True).count() if Path(where).is_file() else 0
            if have != args.rows:
                Path(where).unlink(missing_ok=True)
                led = Ledger(where)
                result["generate_s"] = round(generate(led, args.rows, args.days, end,
                                                      args.batch, args.seed), 1)
                led.close()
            result["file_mb"] = round(Path(where).stat().st_size / 2**20)
        print(json.dumps(result), flush=True)
        result.update(bench(where, since, args.runs, args.rows_path, args.export))
        print(json.dumps(result, indent=1))
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
