"""Per-call overhead of TallyStrategy against the router's built-in simple-shuffle.

Two routers with the same three deployments (``mock_response``: no network)
run interleaved rounds: each round times ``--calls`` completions on the
simple-shuffle router, then as many on the Tally router (order alternating
between rounds), so drift in the machine hits both alike. Reported, sync and
async: the median over rounds of the per-call wall time and of the per-call
CPU time of the whole process (every thread: LiteLLM's logging threads and
Tally's telemetry worker count too), and the median of the per-round paired
differences. The Tally router does everything it does in production: builds
the envelope, routes, the caller reads the decision off each response
(``get_decision``, on both routers), and its callback reports every
call to a Tally whose state and ledger live on disk (a temporary directory)
and are written by its background worker.

Run:  python tools/bench_litellm_overhead.py [--rounds 30] [--calls 100]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402

from tally_core import Tally  # noqa: E402
from tally_litellm import TallyStrategy, get_decision  # noqa: E402

MSGS = [{"role": "user", "content": "Summarise the plot of Hamlet in two sentences."}]
META = {"tally": {"task_type": "summarisation", "quality_floor": 0.8}}


def model_list() -> list[dict[str, Any]]:
    return [
        {"model_name": "auto",
         "litellm_params": {"model": m, "api_key": "sk-bench", "mock_response": "ok"}}
        for m in ("gpt-4o-mini", "claude-haiku-4-5", "openai/gpt-4o")
    ]


def sync_round(router: litellm.Router, n: int) -> tuple[float, float]:
    """Wall time and process CPU time (all threads) per call."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        get_decision(router.completion(model="auto", messages=MSGS, metadata=dict(META)))
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


async def async_round(router: litellm.Router, n: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        get_decision(await router.acompletion(model="auto", messages=MSGS, metadata=dict(META)))
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


class Timers:
    """Time spent inside Tally's hooks, to attribute the overhead exactly."""

    def __init__(self) -> None:
        self.total_s: dict[str, float] = {}
        self.on = False

    def _add(self, name: str, dt: float) -> None:
        if self.on:
            self.total_s[name] = self.total_s.get(name, 0.0) + dt

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(name, time.perf_counter() - t0)

        return timed

    def awrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        # Includes what the hook awaits: the router's cooldown cache (in memory).
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._add(name, time.perf_counter() - t0)

        return timed


def micro(strategy: TallyStrategy, tallied: litellm.Router, base: litellm.Router) -> None:
    """The deployment pick alone, Tally's against simple-shuffle's, in a tight loop."""

    def kw() -> dict[str, Any]:
        return {"metadata": {"tally": dict(META["tally"]), "model_group": "auto"},
                "litellm_trace_id": "bench"}

    def best_of(fn: Callable[[], Any], n: int = 2000) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter() - t0) / n * 1e6)
        return min(runs)

    ours = best_of(lambda: strategy.get_available_deployment(
        model="auto", messages=MSGS, request_kwargs=kw()))
    if hasattr(base, "registry"):
        # From 1.109 the Router's own pick is not a callable member: time Tally's alone.
        print("picking the deployment alone (best of 5 x 2000, no telemetry flowing):")
        print(f"  sync   tally {ours:6.1f} us")
        return
    theirs = best_of(lambda: litellm.Router.get_available_deployment(
        base, model="auto", messages=MSGS, request_kwargs=kw()))

    async def abest_of(which: str, n: int = 2000) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                if which == "tally":
                    await strategy.async_get_available_deployment(
                        model="auto", messages=MSGS, request_kwargs=kw())
                else:
                    await litellm.Router.async_get_available_deployment(
                        base, model="auto", messages=MSGS, request_kwargs=kw())
            runs.append((time.perf_counter() - t0) / n * 1e6)
        return min(runs)

    aours, atheirs = asyncio.run(abest_of("tally")), asyncio.run(abest_of("simple-shuffle"))
    print("picking the deployment alone (best of 5 x 2000, no telemetry flowing):")
    print(f"  sync   tally {ours:6.1f} us   simple-shuffle {theirs:6.1f} us   "
          f"added {ours - theirs:+6.1f} us")
    print(f"  async  tally {aours:6.1f} us   simple-shuffle {atheirs:6.1f} us   "
          f"added {aours - atheirs:+6.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--store", choices=("disk", "memory"), default="disk",
                    help="Tally's state and ledger: a temporary directory, or in memory")
    ap.add_argument("--stub-telemetry", action="store_true",
                    help="make tally.telemetry a no-op: the adapter's cost without the core's")
    ap.add_argument("--no-micro", action="store_true", help="skip the deployment-pick loop")
    ap.add_argument("--no-infer", action="store_true",
                    help="TallyStrategy(infer=False): no task type read off the messages")
    ap.add_argument("--no-task-type", action="store_true",
                    help="calls give no task_type: the zero-configuration case")
    args = ap.parse_args()
    if args.no_task_type:
        META["tally"].pop("task_type", None)

    base = litellm.Router(model_list=model_list(), num_retries=0)  # simple-shuffle
    tallied = litellm.Router(model_list=model_list(), num_retries=0)
    home = tempfile.mkdtemp(prefix="tally-bench-")
    strategy = TallyStrategy(
        Tally(["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"], fallback="gpt-4o",
              store=home if args.store == "disk" else ":memory:", seed=0),
        scorer=lambda request, response: 0.9,
        infer=not args.no_infer,
    )
    if args.stub_telemetry:
        strategy.tally.telemetry = lambda *a, **k: ""  # type: ignore[method-assign]
    timers = Timers()
    # Wrapped before install: LiteLLM 1.106 copies the bound methods when it registers them.
    strategy.get_available_deployment = timers.wrap(  # type: ignore[method-assign]
        "pick deployment (sync)", strategy.get_available_deployment
    )
    strategy.async_get_available_deployment = timers.awrap(  # type: ignore[method-assign]
        "pick deployment (async)", strategy.async_get_available_deployment
    )
    strategy.install(tallied)
    tally = strategy.tally
    tally.route = timers.wrap("  of which Tally.route", tally.route)  # type: ignore[method-assign]
    cb = strategy.callback
    cb._report = timers.wrap("report (logging hook)", cb._report)  # type: ignore[method-assign]
    cb._areport = timers.awrap("report (logging hook)", cb._areport)  # type: ignore[method-assign]

    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        "sync": {"simple-shuffle": [], "tally": []},
        "async": {"simple-shuffle": [], "tally": []},
    }
    async def async_rounds(rounds: int, calls: int) -> None:
        for i in range(rounds):
            pair = [("simple-shuffle", base), ("tally", tallied)]
            for name, router in pair if i % 2 == 0 else pair[::-1]:
                results["async"][name].append(await async_round(router, calls))
                await strategy.aflush(10)

    # Warm up both paths (imports, tokenizer, caches, the first telemetry batch).
    sync_round(base, 20), sync_round(tallied, 20)
    asyncio.run(async_rounds(1, 20))
    for r in results.values():
        for times in r.values():
            times.clear()
    timers.on = True

    for i in range(args.rounds):
        pair = [("simple-shuffle", base), ("tally", tallied)]
        for name, router in pair if i % 2 == 0 else pair[::-1]:
            results["sync"][name].append(sync_round(router, args.calls))
            strategy.flush(10)
    asyncio.run(async_rounds(args.rounds, args.calls))

    timers.on = False
    calls = len(list(strategy.tally.ledger.rows()))
    if not args.no_micro:
        micro(strategy, tallied, base)
    strategy.close()
    strategy.tally.close()
    shutil.rmtree(home, ignore_errors=True)
    print(f"litellm {metadata.version('litellm')}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; {args.rounds} rounds x {args.calls} calls per router "
          f"and mode; store {args.store}; {calls} calls reported to Tally"
          + (" (telemetry stubbed)" if args.stub_telemetry else ""))
    print("per call, median over rounds; 'added' is the median of the per-round paired "
          "differences [IQR]")
    for mode, r in results.items():
        for i, what in ((0, "wall"), (1, "CPU ")):
            base = [x[i] * 1e3 for x in r["simple-shuffle"]]
            mine = [x[i] * 1e3 for x in r["tally"]]
            diffs = [t - b for t, b in zip(mine, base, strict=True)]
            q1, q2, q3 = statistics.quantiles(diffs, n=4)
            b = statistics.median(base)
            print(f"  {mode:5s} {what}  simple-shuffle {b:6.3f} ms  tally "
                  f"{statistics.median(mine):6.3f} ms  added {q2:+.3f} ms "
                  f"({q2 / b * 100:+.1f}%) [{q1:+.3f}, {q3:+.3f}]")
    per_mode = args.rounds * args.calls
    base_all = statistics.median(
        [x[0] for x in results["sync"]["simple-shuffle"] + results["async"]["simple-shuffle"]]
    )
    print("time inside Tally's hooks (wall clock, so it includes waits for the GIL):")
    for name, total in timers.total_s.items():
        calls_in = per_mode if name.endswith("sync)") else 2 * per_mode
        us = total / calls_in * 1e6
        print(f"  {name:26s} {us:7.1f} us  ({us / (base_all * 1e6) * 100:.2f}% of a call)")

if __name__ == "__main__":
    main()

