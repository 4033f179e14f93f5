"""Alternate the overhead benchmark between two checkouts, in one window.

Absolute timings drift by 2x on a shared machine within minutes; runs of the
two checkouts taken in turn see the same drift, so their distributions
compare. Each run is a fresh interpreter with only that checkout on the path.

    git archive <commit> | tar -x -C /tmp/base
    python tools/ab_overhead.py /tmp/base . --pairs 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CODE = """
import json
try:  # where the lab lives after issue 12; before it, tally_core.bench
    from tally_core.eval.bench import route_latency, telemetry_latency, telemetry_throughput
except ImportError:
    from tally_core.bench import route_latency, telemetry_latency, telemetry_throughput
print(json.dumps({
    "worker_events_per_s": telemetry_throughput(20000)["events_per_s"],
    "telemetry_p50_us": telemetry_latency(iters=20000, repeats=3)["p50_us"],
    "route_mem20_p50_us": route_latency(20, "memory", repeats=3)["p50_us"],
    "route_mem20_p99_us": route_latency(20, "memory", repeats=3)["p99_us"],
    "route_disk20_p99_us": route_latency(20, "disk", repeats=3)["p99_us"],
}))
"""


def _run(path: str) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.path.abspath(path),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    out = subprocess.run(
        [sys.executable, "-c", _CODE], cwd=path, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[round(q * (len(xs) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="first checkout (e.g. the code before a change)")
    ap.add_argument("b", help="second checkout")
    ap.add_argument("--pairs", type=int, default=10)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {args.a: [], args.b: []}
    for _ in range(args.pairs):
        for path in (args.a, args.b):
            runs[path].append(_run(path))
    for path, rows in runs.items():
        print(path)
        for key in rows[0]:
            xs = [r[key] for r in rows]
            print(
                f"  {key:22s} mean {statistics.mean(xs):9.1f}  p10 {_pct(xs, 0.1):9.1f}  "
                f"p90 {_pct(xs, 0.9):9.1f}  (n={len(xs)})"
            )


if __name__ == "__main__":
    main()
