"""Page and API latency of ``tally dashboard`` over a ledger of N synthetic calls.

Fills a ledger in a temporary directory with ``--calls`` seeded rows (two
orgs, three task types, three models, 5% holdout, 2% errors; no learned
state, so the task-type page shows the ledger's figures only), then requests
each page and API endpoint ``--repeats`` times through Starlette's
TestClient (in process: no network) and prints the median, p10 and p90 of the
wall time per request. One org holds about half the calls.

Run:  python tools/bench_dashboard.py [--calls 100000] [--repeats 9] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from tally_core import Ledger
from tally_core.dashboard.app import create_app
from tally_core.dashboard.data import DashboardData
from tally_core.home import StoreDir

MODELS = [("gpt-4o-mini", 0.15, 0.6), ("gpt-4o", 2.5, 10.0), ("claude-haiku-4-5", 1.0, 5.0)]
PATHS = [
    "/?org=acme",
    "/tasks?org=acme",
    "/calls?org=acme",
    "/calls?org=acme&errors=1&page=3",
    "/savings?org=acme",
    "/api/report?org=acme",
    "/api/calls?org=acme&phase=explore&per_page=100",
]


def fill(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    led = Ledger(path)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        m, pi, po = rng.choice(MODELS)
        it, ot = rng.randint(100, 2000), rng.randint(50, 500)
        rows.append(
            {
                "event_id": f"e{i}",
                "decision_id": f"d{i}",
                "ts": 1.75e9 + i * 10.0,
                "org": rng.choice(["acme", "beta"]),
                "task_type": rng.choice(["qa-simple", "code-debug", "summarisation"]),
                "model": m,
                "phase": rng.choice(["exploit", "explore", "calibrate", "fallback"]),
                "holdout": int(rng.random() < 0.05),
                "input_tokens": it,
                "output_tokens": ot,
                "cost_usd": (it * pi + ot * po) / 1e6,
                "input_cost_per_mtok": pi,
                "output_cost_per_mtok": po,
                "quality": float(rng.random() < 0.9),
                "latency_ms": rng.uniform(100, 900),
                "error": "RateLimitError" if rng.random() < 0.02 else None,
                "quality_floor": 0.8,
            }
        )
        if len(rows) == 10_000:
            led.append(rows)
            rows = []
    led.append(rows)
    led.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fill(StoreDir(tmp).ledger, args.calls, args.seed)
        data = DashboardData.open(tmp)
        client = TestClient(create_app(data))
        print(f"{args.calls:,} calls; ms per request over {args.repeats} requests")
        print(f"{'request':<50} {'median':>8} {'p10':>8} {'p90':>8}")
        for path in PATHS:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                if res.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {res.status_code}")
            q = statistics.quantiles(times, n=10, method="inclusive")
            print(f"{path:<50} {statistics.median(times):8.0f} {q[0]:8.0f} {q[-1]:8.0f}")
        data.close()


if __name__ == "__main__":
    main()
