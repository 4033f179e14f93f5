"""Benchmarks: routing overhead (``overhead``), routers compared on a
simulated workload (``routing``, see ``tally_core.eval.sim``), and the same routers
replayed on a logged evaluation table (``replay``, see ``tally_core.eval.replay``).

Run them with ``python -m tally_core.eval.bench overhead``,
``python -m tally_core.eval.bench routing --scenario seed-landscape --calls 20000
--seed 1 --json out.json`` or ``python -m tally_core.eval.bench replay evals.csv
--floor 0.8``. Every overhead figure is a median over many timed iterations,
after warm-up, in one process; absolute times drift on shared machines, so
compare figures from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tally_core.eval.replay import EvalTable

__all__ = [
    "distribution",
    "format_distribution",
    "format_table",
    "import_time",
    "main",
    "orders",
    "overhead",
    "replay",
    "run_comparison",
]

#: Stream orders a benchmark runs by default: one draw is never a figure.
DEFAULT_ORDERS = 10

_TASKS = (
    "classification",
    "extraction",
    "summarisation",
    "qa-simple",
    "code-generation",
    "reasoning",
    "architecture-design",
    "formatting",
)


def run_comparison(
    scenario: str = "seed-landscape",
    seed: int = 1,
    calls: int | None = None,
    routers: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``tally_core.eval.sim.run_comparison``; see there for the figures. ``extra``
    adds router factories by name, and their routers to the default set."""
    from tally_core.eval import sim

    names = routers or (*sim.ROUTER_NAMES, *(extra or {}))
    return sim.run_comparison(scenario, seed=seed, calls=calls, routers=names, extra=extra)


def replay(
    file: str | EvalTable,
    floor: str | float | Mapping[str, float | None] | None = 0.8,
    seed: int = 1,
    calls: int | None = None,
    routers: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``tally_core.eval.replay.replay`` on an evaluation table (CSV or JSONL); see
    there for the file and the figures. ``extra`` adds router factories by
    name, and their routers to the default set; ``kwargs`` go to ``replay``
    (``shuffle``, ``warmup``, ``best``, ``file_format``)."""
    from tally_core.eval import replay as rp

    return rp.replay(
        file, floor=floor, seed=seed, calls=calls, routers=routers, extra=extra, **kwargs
    )


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), NaNs left out."""
    xs = sorted(v for v in values if v == v)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per router, the mean, p10, p90 (and min, max) over several runs of
    ``oracle_savings_share`` and ``violation_rate``; each run's figures kept
    in ``per_seed``. ``results`` are ``run_comparison`` / ``replay`` results.

    >>> runs = [{"seed": s, "routers": {"r": {"oracle_savings_share": x,
    ...          "violation_rate": v}}} for s, x, v in ((1, 0.9, 0.01), (2, 0.7, 0.03))]
    >>> d = distribution(runs)["routers"]["r"]
    >>> round(d["share"]["mean"], 3), round(d["violations"]["p90"], 4)
    (0.8, 0.028)
    """
    if not results:
        raise ValueError("distribution() needs at least one result")
    first = results[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in ("routers", "seed")}
    out["seeds"] = [r["seed"] for r in results]
    routers: dict[str, Any] = {}
    for name in first["routers"]:
        shares = [float(r["routers"][name]["oracle_savings_share"]) for r in results]
        viols = [float(r["routers"][name]["violation_rate"]) for r in results]
        stat: dict[str, Any] = {}
        for key, xs in (("share", shares), ("violations", viols)):
            finite = [x for x in xs if x == x]
            stat[key] = {
                "mean": sum(finite) / len(finite) if finite else float("nan"),
                "p10": _quantile(xs, 0.10),
                "p90": _quantile(xs, 0.90),
                "min": min(finite, default=float("nan")),
                "max": max(finite, default=float("nan")),
            }
        stat["per_seed"] = [
            {
                "seed": r["seed"],
                "share": s,
                "violations": v,
                "adaptation_calls": r["routers"][name].get("adaptation_calls", []),
            }
            for r, s, v in zip(results, shares, viols, strict=True)
        ]
        routers[name] = stat
    out["routers"] = routers
    out["orders"] = len(results)
    return out


def orders(run: Callable[[int], dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """``run(seed)`` for every seed (a stream order each: the replay's shuffle
    and Tally's draws), summarised by ``distribution``."""
    return distribution([run(s) for s in seeds])


def format_distribution(result: Mapping[str, Any]) -> str:
    """Plain-text table of a ``distribution``: share of the oracle's savings
    and floor violations, mean / p10 / p90 over the stream orders."""
    seeds = result["seeds"]
    if result.get("source") == "replay":
        head = (
            f"replay {result['file']} ({result['prompts']} prompts x "
            f"{len(result['models'])} models), {result['calls']} calls"
            f"{', shuffled' if result['shuffle'] else ''}, {_floors_text(result['floors'])}"
        )
    else:
        head = f"scenario {result['scenario']}, {result['calls']} calls"
    head += f"; {len(seeds)} orders (seeds {seeds[0]}-{seeds[-1]})\n"
    rows = []
    for name, d in result["routers"].items():
        sh, vi = d["share"], d["violations"]
        rows.append(
            [
                name,
                f"{sh['mean']:.3f}",
                f"{sh['p10']:.3f}",
                f"{sh['p90']:.3f}",
                f"{vi['mean']:.2%}",
                f"{vi['p10']:.2%}",
                f"{vi['p90']:.2%}",
            ]
        )
    text = head + _table(
        [
            "router",
            "share mean",
            "share p10",
            "share p90",
            "viol. mean",
            "viol. p10",
            "viol. p90",
        ],
        rows,
    )
    for name, d in result["routers"].items():
        events = [e for run in d["per_seed"] for e in run.get("adaptation_calls", [])]
        for kind, model, task in sorted({(e["kind"], e["model"], e["task"]) for e in events}):
            calls = [
                str(e["calls_until_adapted"])
                for e in events
                if (e["kind"], e["model"], e["task"]) == (kind, model, task)
            ]
            text += (
                f"\n{name}: {kind} {model} on {task} -> adapted after "
                f"{', '.join(calls)} calls (one figure per order)"
            )
    return text + _difficulty_text(result)


def _pool(size: int) -> list[Any]:
    from tally_core.catalog import ModelSpec

    return [
        ModelSpec(
            name=f"bench-model-{i:03d}",
            input_cost_per_mtok=0.05 * (i + 1),
            output_cost_per_mtok=0.2 * (i + 1),
            context_window=128_000,
            supports_tools=True,
            provider=f"p{i % 4}",
        )
        for i in range(size)
    ]


def _envelopes() -> list[dict[str, Any]]:
    return [{"task_type": t, "quality_floor": 0.8} for t in _TASKS]


def _teach(tally: Any, size: int, per_model: int) -> None:
    """Outcomes for every (task type, model): cheap models weak on hard tasks."""
    import random

    rng = random.Random(0)
    for t_i, task in enumerate(_TASKS):
        hard = t_i >= 4
        for m_i in range(size):
            name = f"bench-model-{m_i:03d}"
            mean = (0.5 + 0.45 * m_i / max(size - 1, 1)) if hard else 0.9
            for _ in range(per_model):
                q = min(max(rng.gauss(mean, 0.05), 0.0), 1.0)
                tally.telemetry(
                    model=name, task_type=task, quality=q, input_tokens=1000, output_tokens=300
                )
    tally.flush(60)


def _pct(ns: list[int], q: float) -> float:
    s = sorted(ns)
    return s[min(int(q * len(s)), len(s) - 1)] / 1000.0


def _time_route(tally: Any, iters: int, repeats: int) -> dict[str, float]:
    envs = _envelopes()
    k = len(envs)
    for i in range(2000):  # warm the route caches and the interpreter
        tally.route(envs[i % k])
    p50s, p99s = [], []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        ns = []
        for i in range(iters):
            env = envs[i % k]
            t0 = clock()
            tally.route(env)
            ns.append(clock() - t0)
        p50s.append(_pct(ns, 0.50))
        p99s.append(_pct(ns, 0.99))
    return {"p50_us": statistics.median(p50s), "p99_us": statistics.median(p99s)}


def route_latency(
    size: int, store: str, iters: int = 20_000, repeats: int = 5, per_model: int = 30
) -> dict[str, float]:
    """``route()`` latency (us) on a pool of ``size`` models with learned state.

    ``store`` is ``"memory"`` or ``"disk"``: for disk, the state is taught on
    one instance (applied at once), then a fresh background instance over the
    same directory is timed, as an app replica would be.
    """
    from tally_core.router import Tally

    pool = _pool(size)
    fallback = pool[-1].name
    if store == "memory":
        with Tally(pool, fallback=fallback, store=":memory:", seed=1, background=False) as t:
            _teach(t, size, per_model)
            return _time_route(t, iters, repeats)
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as d:
        with Tally(pool, fallback=fallback, store=d, seed=1, background=False) as t:
            _teach(t, size, per_model)
        with Tally(pool, fallback=fallback, store=d, seed=1, background=True) as t:
            return _time_route(t, iters, repeats)


def telemetry_latency(iters: int = 20_000, repeats: int = 3) -> dict[str, float]:
    """``telemetry()`` time on the caller's thread (us), disk store, worker on."""
    from tally_core.router import Tally

    pool = _pool(20)
    p50s, p99s = [], []
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as d:
        with Tally(
            pool, fallback=pool[-1].name, store=d, seed=1, background=True, max_queue=10 * iters
        ) as t:
            envs = _envelopes()
            clock = time.perf_counter_ns
            for _ in range(repeats):
                decisions = [t.route(envs[i % len(envs)]) for i in range(iters)]
                ns = []
                for i, dec in enumerate(decisions):
                    t0 = clock()
                    t.telemetry(
                        dec,
                        quality=0.9,
                        input_tokens=1000,
                        output_tokens=300,
                        latency_ms=800.0,
                        cost_usd=0.001 + i * 1e-9,
                    )
                    ns.append(clock() - t0)
                p50s.append(_pct(ns, 0.50))
                p99s.append(_pct(ns, 0.99))
                t.flush(120)
    return {"p50_us": statistics.median(p50s), "p99_us": statistics.median(p99s)}


def telemetry_throughput(n: int = 20_000) -> dict[str, float]:
    """Events/s the background worker applies to the disk store: enqueue ``n``
    events, then flush; wall time from the first enqueue to the flush."""
    from tally_core.router import Tally

    pool = _pool(20)
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as d:
        with Tally(
            pool, fallback=pool[-1].name, store=d, seed=1, background=True, max_queue=2 * n
        ) as t:
            envs = _envelopes()
            decisions = [t.route(envs[i % len(envs)]) for i in range(n)]
            t0 = time.perf_counter()
            for dec in decisions:
                t.telemetry(dec, quality=0.9, input_tokens=1000, output_tokens=300)
            t_enq = time.perf_counter()
            ok = t.flush(300)
            t1 = time.perf_counter()
            counts = t.telemetry_counts
    return {
        "events": n,
        "seconds": t1 - t0,
        "enqueue_seconds": t_enq - t0,
        "events_per_s": n / (t1 - t0),
        "flushed": ok,
        "applied": counts.get("applied", -1),
    }


def import_time(runs: int = 5) -> dict[str, float]:
    """``import tally_core`` in a fresh interpreter (s), median of ``runs``."""
    code = "import time; t = time.perf_counter(); import tally_core; print(time.perf_counter() - t)"
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.strip()))
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def overhead(quick: bool = False) -> dict[str, Any]:
    """Routing overhead: ``route()`` p50/p99 (us) for 5/20/100 models in memory
    and on disk, ``telemetry()`` caller time, worker throughput on disk, import
    time. ``quick`` runs fewer iterations (a smoke run, not a measurement)."""
    iters, repeats = (2_000, 1) if quick else (20_000, 5)
    route: dict[str, dict[str, float]] = {}
    for store in ("memory", "disk"):
        for size in (5, 20, 100):
            route[f"{store}/{size}"] = route_latency(
                size, store, iters=iters, repeats=repeats, per_model=5 if quick else 30
            )
    return {
        "machine": machine(),
        "route": route,
        "telemetry": telemetry_latency(iters=iters, repeats=1 if quick else 3),
        "throughput": telemetry_throughput(2_000 if quick else 20_000),
        "import": import_time(2 if quick else 5),
        "quick": quick,
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table for the result of ``overhead`` or ``run_comparison``."""
    if "routers" in result:
        rows = []
        for name, d in result["routers"].items():
            share = ", ".join(
                f"{m} {s:.0%}"
                for m, s in sorted(d["share"].items(), key=lambda x: -x[1])[:3]
                if s >= 0.01
            )
            rows.append(
                [
                    name,
                    f"{d['cost_usd']:.2f}",
                    f"{d['cost_vs_best']:.3f}",
                    f"{d['oracle_savings_share']:.3f}",
                    f"{d['mean_quality']:.3f}",
                    f"{d['quality_vs_best']:.3f}",
                    f"{d['violation_rate']:.2%}",
                    share,
                ]
            )
        if result.get("source") == "replay":
            head = (
                f"replay {result['file']} ({result['prompts']} prompts x "
                f"{len(result['models'])} models), seed {result['seed']}, "
                f"{result['calls']} calls{', shuffled' if result['shuffle'] else ''}, "
                f"{_floors_text(result['floors'])}\n"
            )
        else:
            head = (
                f"scenario {result['scenario']}, seed {result['seed']}, {result['calls']} calls\n"
            )
        text = head + _table(
            [
                "router",
                "cost $",
                "vs best",
                "oracle savings",
                "quality",
                "q vs best",
                "violations",
                "top models",
            ],
            rows,
        )
        tally = result["routers"].get("tally")
        if tally:
            text += f"\ntally calibration calls: {tally['calibration_calls']}"
        text += _difficulty_text(result)
        for name, d in result["routers"].items():
            for a in d["adaptation_calls"]:
                text += (
                    f"\n{name}: {a['kind']} {a['model']} on {a['task']} -> adapted after "
                    f"{a['calls_until_adapted']} of {a['task_calls_after']} calls"
                )
            for rc in d.get("drift_recovery", ()):
                n = rc["calls_until_recovered"]
                text += (
                    f"\n{name}: within 5% of the oracle's cost and 1% of its violations "
                    f"(every 100-call window of {rc['task']}) "
                    + ("never, in this run" if n is None else f"from {n} calls after the change")
                )
        return text
    rows = [[k, f"{v['p50_us']:.1f}", f"{v['p99_us']:.1f}"] for k, v in result["route"].items()]
    rows.append(
        [
            "telemetry()",
            f"{result['telemetry']['p50_us']:.1f}",
            f"{result['telemetry']['p99_us']:.1f}",
        ]
    )
    text = _table(["route (store/models)", "p50 us", "p99 us"], rows)
    tp = result["throughput"]
    text += (
        f"\nworker throughput (disk): {tp['events_per_s']:.0f} events/s "
        f"({tp['events']} events in {tp['seconds']:.2f} s)"
    )
    text += f"\nimport tally_core: {result['import']['median_s'] * 1000:.0f} ms (median)"
    m = result["machine"]
    text += f"\nmachine: {m['cpus']} CPUs, {m['processor']}, Python {m['python']}"
    return text


def _difficulty_text(result: Mapping[str, Any]) -> str:
    """The replay's "floor difficulty" lines: per task type with a rival no
    dearer than the cheapest model that clears, the calls below the floor
    that telling them apart takes (``tally_core.eval.difficulty``)."""
    diff = result.get("difficulty") or {}
    if not diff:
        return ""
    hard = {t: d for t, d in diff.items() if d.get("rival")}
    if not hard:
        return (
            "\nfloor difficulty: every floor's cheapest clearing model is also the cheapest "
            "candidate (learnable on calls that clear)"
        )
    text = (
        "\nfloor difficulty (calls below the floor that telling the cheapest clearing model "
        "from its hardest rival takes, on average, whatever the policy):"
    )
    total = 0.0
    for t, d in hard.items():
        share = d.get("share_of_calls")
        text += (
            f"\n  {t} (floor {d['floor']:g}): {d['target']} {d['target_quality']:.3f} vs "
            f"{d['rival']} {d['rival_quality']:.3f}: about {d['expected_violations']:.0f} calls"
            + (f" ({share:.1%} of its calls)" if share is not None else "")
        )
        total += d["expected_violations"]
    calls = sum(d.get("calls") or 0 for d in diff.values())
    if calls:
        text += f"\n  together about {total:.0f} calls, {total / calls:.1%} of the run's calls"
    return text


def _floors_text(floors: Mapping[str, float | None]) -> str:
    """``floor 0.8 (reasoning 0.85)``: the most common floor, then the others."""
    if not floors:
        return "no floors"
    values = list(floors.values())
    common = max(values, key=lambda v: (values.count(v), v is None))
    text = "parity" if common is None else f"floor {common:g}"
    others = [
        f"{t} {'parity' if v is None else f'{v:g}'}" for t, v in floors.items() if v != common
    ]
    return text + (f" ({', '.join(others)})" if others else "")


def main(
    argv: Sequence[str] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    prog: str = "python -m tally_core.eval.bench",
) -> int:
    """The benchmark command. ``extra``: more routers for ``routing`` (see
    ``tally_litellm.bench``, which adds LiteLLM's Adaptive Router)."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead", help="route/telemetry latency, throughput, import time")
    o.add_argument("--quick", action="store_true")
    o.add_argument("--json", metavar="FILE")
    r = sub.add_parser("routing", help="routers compared on a simulated workload")
    r.add_argument("--scenario", default="seed-landscape")
    r.add_argument("--calls", type=int, default=None)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--routers", default=None, help="comma-separated router names")
    r.add_argument(
        "--orders",
        type=int,
        default=DEFAULT_ORDERS,
        help=f"stream orders (seeds SEED, SEED+1, ...; default {DEFAULT_ORDERS}): the table "
        "reports mean, p10 and p90 over them; 1 prints the single run's full table",
    )
    r.add_argument("--json", metavar="FILE")
    p = sub.add_parser(
        "replay",
        help="routers compared on a logged evaluation table (CSV or JSONL)",
        description="Replay an evaluation table -- rows of prompt_id, task_type, model, "
        "quality (0-1 or true/false), input_tokens, output_tokens, and optionally latency_ms "
        "and cost_usd -- through Tally and the baselines: one call per prompt; a router sees "
        "only the outcome of the model it chose. See tally_core.eval.replay.",
    )
    p.add_argument("file", help="a .csv or .jsonl file (or give --format)")
    p.add_argument(
        "--floor",
        default="0.8",
        help="quality floor: one for every task type (default 0.8), e.g. "
        "'0.8,reasoning=0.85' (a bare value for the task types not named), or 'parity' "
        "(the cheapest model within 0.02 of the best)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--calls", type=int, default=None, help="default one per prompt; more cycles the file"
    )
    p.add_argument("--shuffle", action="store_true", help="prompts in a seeded random order")
    p.add_argument(
        "--warmup", type=int, default=0, help="calls per task type before violations count"
    )
    p.add_argument("--best", default=None, help="the always-best model and Tally's fallback")
    p.add_argument("--format", choices=("csv", "jsonl"), default=None)
    p.add_argument(
        "--routers",
        default=None,
        help="comma-separated router names (hindsight: knows each prompt's grades)",
    )
    p.add_argument(
        "--orders",
        type=int,
        default=DEFAULT_ORDERS,
        help=f"stream orders (seeds SEED, SEED+1, ...; default {DEFAULT_ORDERS}): the table "
        "reports mean, p10 and p90 over them; 1 prints the single run's full table",
    )
    p.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    from tally_core.errors import TallyError

    n_orders = getattr(args, "orders", 1)
    if n_orders < 1:
        print(f"{prog}: error: --orders: must be at least 1, got {n_orders}", file=sys.stderr)
        return 2
    try:
        run: Callable[[int], dict[str, Any]]
        if args.what == "overhead":
            result = overhead(quick=args.quick)
        else:
            if args.what == "replay":
                from tally_core.eval import replay as rp

                table = rp.load_table(args.file, args.format)
                names = [n.strip() for n in args.routers.split(",")] if args.routers else None

                def run(seed: int) -> dict[str, Any]:
                    return replay(
                        table,
                        floor=args.floor,
                        seed=seed,
                        calls=args.calls,
                        routers=names,
                        extra=extra,
                        shuffle=args.shuffle,
                        warmup=args.warmup,
                        best=args.best,
                    )

            else:
                routers = args.routers.split(",") if args.routers else None

                def run(seed: int) -> dict[str, Any]:
                    return run_comparison(
                        args.scenario, seed=seed, calls=args.calls, routers=routers, extra=extra
                    )

            seeds = list(range(args.seed, args.seed + n_orders))
            result = run(seeds[0]) if n_orders == 1 else orders(run, seeds)
    except (TallyError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:  # before printing, so a closed pipe loses no figures
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=str)
    print(format_distribution(result) if "seeds" in result else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
