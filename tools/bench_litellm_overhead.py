"""Per-call overhead of TallyStrategy against the router's built-in simple-shuffle.

Two routers with the same three deployments (``mock_response``: no network)
run interleaved rounds: each round times ``--calls`` completions on the
simple-shuffle router, then as many on the Tally router (order alternating
between rounds), so drift in the machine hits both alike. Reported: the
median over rounds of the mean per-call time, sync and async, and the
difference. The Tally router does everything it does in production: builds
the envelope, routes, stamps the response, and its callback reports every
call to a Tally whose state and ledger live on disk (a temporary directory)
and are written by its background worker.

Run:  python tools/bench_litellm_overhead.py [--rounds 15] [--calls 200]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402

from tally_core import Tally  # noqa: E402
from tally_litellm import TallyStrategy  # noqa: E402

MSGS = [{"role": "user", "content": "Summarise the plot of Hamlet in two sentences."}]
META = {"tally": {"task_type": "summarisation", "quality_floor": 0.8}}


def model_list() -> list[dict[str, Any]]:
    return [
        {"model_name": "auto",
         "litellm_params": {"model": m, "api_key": "sk-bench", "mock_response": "ok"}}
        for m in ("gpt-4o-mini", "claude-haiku-4-5", "openai/gpt-4o")
    ]


def sync_round(router: litellm.Router, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        router.completion(model="auto", messages=MSGS, metadata=dict(META))
    return (time.perf_counter() - t0) / n


async def async_round(router: litellm.Router, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await router.acompletion(model="auto", messages=MSGS, metadata=dict(META))
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()

    base = litellm.Router(model_list=model_list(), num_retries=0)  # simple-shuffle
    tallied = litellm.Router(model_list=model_list(), num_retries=0)
    home = tempfile.mkdtemp(prefix="tally-bench-")
    strategy = TallyStrategy(
        Tally(["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"], fallback="gpt-4o",
              store=home, seed=0),
        scorer=lambda request, response: 0.9,
    ).install(tallied)

    results: dict[str, dict[str, list[float]]] = {
        "sync": {"simple-shuffle": [], "tally": []},
        "async": {"simple-shuffle": [], "tally": []},
    }
    # Warm up both paths (imports, tokenizer, caches, the first telemetry batch).
    sync_round(base, 20), sync_round(tallied, 20)
    asyncio.run(async_round(base, 20)), asyncio.run(async_round(tallied, 20))

    async def async_rounds() -> None:
        for i in range(args.rounds):
            pair = [("simple-shuffle", base), ("tally", tallied)]
            for name, router in pair if i % 2 == 0 else pair[::-1]:
                results["async"][name].append(await async_round(router, args.calls))
                await strategy.aflush(30)

    for i in range(args.rounds):
        pair = [("simple-shuffle", base), ("tally", tallied)]
        for name, router in pair if i % 2 == 0 else pair[::-1]:
            results["sync"][name].append(sync_round(router, args.calls))
            strategy.flush(30)
    asyncio.run(async_rounds())

    calls = len(list(strategy.tally.ledger.rows()))
    strategy.close()
    print(f"litellm {litellm.__version__ if hasattr(litellm, '__version__') else '?'}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds x {args.calls} calls per router and mode; "
          f"{calls} calls reported to Tally")
    print(f"{'mode':6s} {'simple-shuffle':>16s} {'tally':>12s} {'added':>12s} {'added %':>8s}")
    for mode, r in results.items():
        base_ms = statistics.median(r["simple-shuffle"]) * 1e3
        tally_ms = statistics.median(r["tally"]) * 1e3
        print(f"{mode:6s} {base_ms:13.3f} ms {tally_ms:9.3f} ms {tally_ms - base_ms:9.3f} ms "
              f"{(tally_ms / base_ms - 1) * 100:7.2f}%")


if __name__ == "__main__":
    main()
