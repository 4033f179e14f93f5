"""Ledger insert throughput: SQLite (WAL, a file) against PostgreSQL.

Writes recorder-shaped rows in batches of the telemetry queue's size (1,024)
through ``Ledger.write``, into a fresh ledger per run, and prints rows/s per
engine (mean, p10, p90 over the runs), the cost of replaying the same
batches (every row a duplicate, skipped by event id) and, with ``--writers``,
N processes writing one ledger at once (a fleet's replicas; SQLite's are on
one machine, sharing one file).

    python tools/bench_ledger_insert.py --rows 20000 --runs 5 --writers 4
    python tools/bench_ledger_insert.py --url postgresql://tally:pw@db:5432/postgres

Without ``--url`` it starts a private PostgreSQL server (Debian's binaries, as
the tests do, fsync off like the tests' server unless ``--fsync``); with it, each run creates a
fresh database on that server (the role needs CREATEDB).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tally_core.ledger import Ledger, open_ledger  # noqa: E402

BATCH = 1024
MODELS = ("gpt-4o-mini", "claude-haiku-4-5", "gpt-4o")
TASKS = ("qa-simple", "summarisation", "code-generation", "extraction")


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({
            "event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "decision_id": f"d{seed}-{i}",
            "ts": 1.7e9 + i * 0.01, "org": rng.choice(("acme", "beta")),
            "task_type": rng.choice(TASKS), "cell": "*", "structure_type": "prose",
            "context_length": "short", "tools_used": 0, "time_sensitive": False,
            "quality_floor": 0.8, "tags": ["bench"], "model": rng.choice(MODELS),
            "phase": "exploit", "confidence": 0.9, "holdout": rng.random() < 0.05,
            "input_tokens": rng.randint(50, 4000), "output_tokens": rng.randint(10, 800),
            "latency_ms": rng.uniform(100, 3000), "cost_usd": rng.uniform(1e-5, 1e-2),
            "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6, "success": True,
            "quality": rng.random(), "slugs": None, "error": None, "quality_applied": 0.9,
            "clock": float(i), "feedback_ts": None,
        })
    return out


def run(make: Callable[[int], Ledger], n: int, runs: int) -> dict[str, Any]:
    fresh, replay = [], []
    for r in range(runs):
        data = rows(n, seed=r)
        led = make(r)
        try:
            t0 = time.perf_counter()
            new = sum(led.write(data[i:i + BATCH])[0] for i in range(0, n, BATCH))
            t1 = time.perf_counter()
            again = sum(led.write(data[i:i + BATCH])[0] for i in range(0, n, BATCH))
            t2 = time.perf_counter()
            assert new == n and again == 0 and led.count() == n
        finally:
            led.close()
        fresh.append(n / (t1 - t0))
        replay.append(n / (t2 - t1))
    return {"rows_per_s": _dist(fresh), "replay_rows_per_s": _dist(replay)}


def _writer(where: str, n: int, seed: int, go: Any, done: Any) -> None:
    led = open_ledger(where)
    data = rows(n, seed)
    go.wait()
    for i in range(0, n, BATCH):
        led.write(data[i:i + BATCH])
    led.close()
    done.put(seed)


def run_fleet(make: Callable[[int], str], n: int, runs: int, writers: int) -> dict[str, Any]:
    """``writers`` processes, ``n`` rows each, into one ledger at once: rows/s overall."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    speeds = []
    for r in range(runs):
        where = make(r)
        open_ledger(where).close()  # the schema, before the clock starts
        go, done = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(where, n, 100 * r + k, go, done))
                 for k in range(writers)]
        for p in procs:
            p.start()
        time.sleep(2.0)  # let every interpreter import and connect
        t0 = time.perf_counter()
        go.set()
        for _ in procs:
            done.get(timeout=300)
        speeds.append(writers * n / (time.perf_counter() - t0))
        for p in procs:
            p.join()
        led = open_ledger(where)
        assert led.count() == writers * n
        led.close()
    return {"writers": writers, "rows_per_s": _dist(speeds)}


def _fresh_db(url: str) -> str:
    """A new database on ``url``'s server (needs CREATEDB); its URL."""
    import psycopg

    name = f"tally_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def _dist(xs: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else xs * 9
    return {"mean": round(statistics.fmean(xs)), "p10": round(qs[0]), "p90": round(qs[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--url", help="a PostgreSQL server to measure (default: start one)")
    ap.add_argument("--fsync", action="store_true", help="the started server fsyncs commits")
    ap.add_argument("--writers", type=int, default=0,
                    help="also N processes writing one ledger at once (0: skip)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tally-bench-ledger-"))
    out: dict[str, Any] = {"rows": args.rows, "runs": args.runs, "batch": BATCH,
                           "pg_fsync": args.fsync if args.url is None else "server's setting"}
    out["sqlite"] = run(lambda r: Ledger(tmp / f"l{r}.sqlite3"), args.rows, args.runs)
    if args.writers:
        out["sqlite"]["fleet"] = run_fleet(
            lambda r: str(tmp / f"f{r}.sqlite3"), args.rows, args.runs, args.writers
        )
    server = None
    if args.url is None:
        from tests.postgres_support import PostgresServer

        server = PostgresServer(fsync=args.fsync)
        server.start()
        args.url = server.url()
    try:
        out["postgres"] = run(lambda r: open_ledger(_fresh_db(args.url)), args.rows, args.runs)
        if args.writers:
            out["postgres"]["fleet"] = run_fleet(
                lambda r: _fresh_db(args.url), args.rows, args.runs, args.writers
            )
    finally:
        if server is not None:
            server.remove()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
