"""Calls lost to a provider outage, with and without the circuit breaker.

The ``outage`` scenario: the cheapest model fails 90% of its calls for a
tenth of the run. Each seeded stream order runs Tally twice, with the
breaker (the default) and without it; reported over the orders: failed calls
during the outage, calls sent to the failing model during it, and the share
over the whole run (at catalog prices).

    python tools/bench_failover.py [--orders 5] [--calls 20000]
"""

from __future__ import annotations

import argparse
import statistics

from tally_core.eval.sim import TallyRouter, load_scenario, simulate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    scn = load_scenario("outage")
    out: dict[str, list[tuple[int, float]]] = {"breaker": [], "no breaker": []}
    for seed in range(1, args.orders + 1):
        for label, flag in (("breaker", True), ("no breaker", False)):
            router = TallyRouter(scn, seed=seed, breaker=flag)
            res = simulate(scn, [router], seed=seed, calls=args.calls)["tally"]
            out[label].append((res.errors, res.cost_usd))
    print(f"outage: {args.orders} orders x {args.calls} calls")
    for label, runs in out.items():
        errs = [e for e, _ in runs]
        cost = statistics.mean(c for _, c in runs)
        print(f"  {label:10s} failed calls mean {statistics.mean(errs):.0f} "
              f"(min {min(errs)}, max {max(errs)}); cost mean ${cost:.2f}")


if __name__ == "__main__":
    main()
