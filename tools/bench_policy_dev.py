"""Issue 12's dev-set figures: the policy on three triples of real task types.

Reads ``../shared/data/llmrouter-outcomes.csv.gz`` (never copied into the
project), keeps each triple's task types, and replays every triple over
``--orders`` seeded stream orders of ``--calls`` calls through Tally, in a
process pool. Prints, per triple, the share of the oracle's savings and the
share of calls below the floor counted after each task type's first
``--warmup`` calls and from its first call, as mean, p10 and p90, plus the
mean number of violating calls per order by the decision's phase.

    python tools/bench_policy_dev.py --orders 12
    python tools/bench_policy_dev.py --orders 12 --policy '{"cautious": true}'
    python tools/bench_policy_dev.py --orders 12 --calls 900 --warmup 0   # small task types
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tally_core.eval.replay import EvalTable, read_table, replay  # noqa: E402
from tally_core.policy.bandit import FloorBandit  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmrouter-outcomes.csv.gz"
FALLBACK = "llama-3.1-nemotron-51b-instruct"
# Floors by the held-out rule: the cheapest model that clears is 1.4-4 points
# above, a rival 1-4 below, the fallback above every floor (BENCHMARKS.md).
TRIPLES: dict[str, dict[str, float]] = {
    "A": {"code-generation": 0.61, "science-mcq": 0.71, "commonsense-qa": 0.705},
    "B": {"open-book-qa": 0.78, "competition-math": 0.316, "open-domain-qa": 0.371},
    "C": {"graduate-science": 0.16, "trivia-qa": 0.161, "science-mcq": 0.703},
}

_tables: dict[str, EvalTable] = {}


def _table(triple: str) -> EvalTable:
    if triple not in _tables:
        keep = set(TRIPLES[triple])
        with gzip.open(DATA, "rt") as f:
            lines = [ln for k, ln in enumerate(f) if k == 0 or ln.split(",", 2)[1] in keep]
        _tables[triple] = read_table([ln.rstrip("\n") for ln in lines], "csv", name=triple)
    return _tables[triple]


def _job(args: tuple[str, int, int, int, str]) -> tuple[str, dict[str, Any]]:
    triple, seed, calls, warmup, policy = args
    kwargs = {"policy": FloorBandit(**json.loads(policy))} if policy else {}
    r = replay(_table(triple), floor=TRIPLES[triple], seed=seed, calls=calls, shuffle=True,
               warmup=warmup, routers=("tally",), best=FALLBACK, tally_kwargs=kwargs)  # fmt: skip
    return triple, {**r["routers"]["tally"], "difficulty": r["difficulty"]}


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def phase_means(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Calls below the floor per stream in each phase, over ``results``
    (Tally's replay results)."""
    ph: dict[str, float] = {}
    for r in results:
        for k, v in r["violations_by_phase"].items():
            ph[str(k)] = ph.get(str(k), 0.0) + v / len(results)
    return ph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--triples", default="ABC")
    ap.add_argument("--orders", type=int, default=12)
    ap.add_argument("--calls", type=int, default=8520)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--policy", default="", help="FloorBandit keyword arguments as JSON")
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this benchmark needs the shared dev data")
    jobs = [(t, s, a.calls, a.warmup, a.policy) for t in a.triples for s in range(1, a.orders + 1)]
    with Pool(a.procs) as pool:
        done = pool.map(_job, jobs)
    print(f"{a.orders} orders x {a.calls} calls, policy {a.policy or 'defaults'}")
    print(
        "triple  share mean  p10    p90   | viol>w mean  p10    p90   | viol all mean  p90  "
        "| violating calls per order by phase"
    )
    for t in a.triples:
        rs = [r for tt, r in done if tt == t]
        sh = [r["oracle_savings_share"] for r in rs]
        vw = [100 * r["violation_rate"] for r in rs]
        va = [100 * r["violations"] / r["calls"] for r in rs]
        ph = phase_means(rs)
        print(
            f"{t:6}  {statistics.mean(sh):.3f}      {_pct(sh, 0.1):.3f}  {_pct(sh, 0.9):.3f} | "
            f"{statistics.mean(vw):5.2f}%      {_pct(vw, 0.1):4.2f}%  {_pct(vw, 0.9):4.2f}% | "
            f"{statistics.mean(va):5.2f}%        {_pct(va, 0.9):4.2f}% | "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(ph.items()))
        )
    print(
        "\nfloor difficulty (tally_core.eval.difficulty): calls below the floor that telling "
        "each task type's cheapest clearing model from its hardest rival takes, whatever the "
        f"policy; after the warm-up, up to {a.warmup} of each task type's are not counted"
    )
    for t in a.triples:
        diff = next(r for tt, r in done if tt == t)["difficulty"]
        ev = sum(d["expected_violations"] for d in diff.values())
        after = sum(max(d["expected_violations"] - a.warmup, 0.0) for d in diff.values())
        hard = ", ".join(
            f"{task} {d['expected_violations']:.0f}" for task, d in diff.items() if d["rival"]
        )
        print(
            f"{t:6}  {ev:5.0f} calls = {100 * ev / a.calls:.2f}% of calls, "
            f"{100 * after / a.calls:.2f}% after the warm-up ({hard or 'no rival'})"
        )


if __name__ == "__main__":
    main()
