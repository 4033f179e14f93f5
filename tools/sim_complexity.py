"""Complexity in routing: the bandit with and without its complexity cell, and
the seed article's complexity tiers, on a workload whose true quality
depends on each call's complexity.

    python tools/sim_complexity.py                       # seed-complexity, 10 seeds x 20,000 calls
    python tools/sim_complexity.py --seeds 3 --calls 5000

Routers (``tally_core.eval.sim``, one seeded stream per seed, shared by all):

- ``tally``: the default ``FloorBandit``, envelopes with ``complexity``;
- ``tally-no-complexity``: the same, the complexity left out of the envelope;
- ``complexity-threshold``: ``Tally(policy=ComplexityThreshold(tiers=TIERS))``,
  the article's tiers per (task group, complexity level) through the base's
  floor, its models named (``TIERS``);
- ``complexity-threshold-positions``: the same with tiers as positions in
  the candidates ranked by realised cost per call;
- ``threshold``: the article's ``threshold_route`` on the call's score, no floor;
- ``oracle`` (cheapest model that truly clears the floor for the call's
  level) and ``always-best`` (the reference for cost).

Reported per router as mean / p10 / p90 over seeds: cost against
always-best, the share of always-best-minus-oracle saved, violations (calls
sent to a model whose true quality for the call's level is below the
floor, after each task type's warm-up) and the true mean quality.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tally_core.eval.sim import Scenario, SimRouter, TallyRouter, run_comparison  # noqa: E402
from tally_core.policy import ComplexityThreshold  # noqa: E402

ROUTERS = ("tally", "tally-no-complexity", "complexity-threshold",
           "complexity-threshold-positions", "threshold")
METRICS = (
    ("cost_vs_best", "cost / always-best", "{:.3f}"),
    ("oracle_savings_share", "share of oracle saving", "{:.3f}"),
    ("violation_rate", "violations", "{:.2%}"),
    ("mean_quality", "mean true quality", "{:.3f}"),
)


def _no_complexity(sc: Scenario, seed: int) -> SimRouter:
    return TallyRouter(sc, seed, complexity=False, name="tally-no-complexity")


# The article's tiers named in the seed-landscape pool, as the simulator's
# ``threshold`` router places them by the catalog price of each call.
TIERS = {"economy": "gemini-2.5-flash-lite", "standard": "gpt-4o-mini",
         "premium": "claude-sonnet-4-5", "top": "o1"}


def _complexity_threshold(sc: Scenario, seed: int) -> SimRouter:
    return TallyRouter(sc, seed, name="complexity-threshold",
                       policy=ComplexityThreshold(tiers=TIERS))


def _complexity_positions(sc: Scenario, seed: int) -> SimRouter:
    return TallyRouter(sc, seed, name="complexity-threshold-positions",
                       policy=ComplexityThreshold())


def _dist(xs: list[float], fmt: str) -> str:
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return f"{fmt.format(statistics.fmean(xs))} ({fmt.format(q(0.1))}–{fmt.format(q(0.9))})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="seed-complexity")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=None)
    args = ap.parse_args()
    extra = {"tally-no-complexity": _no_complexity, "complexity-threshold": _complexity_threshold,
             "complexity-threshold-positions": _complexity_positions}
    got: dict[str, dict[str, list[float]]] = {}
    for seed in range(1, args.seeds + 1):
        r = run_comparison(args.scenario, seed=seed, calls=args.calls, routers=ROUTERS,
                           extra=extra)
        for name, figs in r["routers"].items():
            per = got.setdefault(name, {m: [] for m, _, _ in METRICS})
            for m, _, _ in METRICS:
                per[m].append(float(figs[m]))
        print(f"seed {seed} done ({r['calls']} calls)", file=sys.stderr)
    print(f"{args.scenario}, {args.seeds} seeds; mean (p10–p90)")
    print("| router | " + " | ".join(label for _, label, _ in METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for name in (*ROUTERS, "oracle", "always-best"):
        per = got[name]
        print(f"| {name} | " + " | ".join(_dist(per[m], fmt) for m, _, fmt in METRICS) + " |")


if __name__ == "__main__":
    main()
