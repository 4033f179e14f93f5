"""Where one hard-only triple's calls go, per task type, and why.

Replays one triple of ``tools/bench_policy_suite.py`` (same draw: ``--seed``,
``--hard-only``) over ``--orders`` seeded orders with ``FloorBandit`` (the
defaults, or ``--policy`` JSON) and counts each task type's calls by the
state the policy was in and where the call went:

* ``allowance``: no model exploited, within the learning allowance;
* ``exploiting``: a model is exploited (the call went to it, or learned);
* ``resolve``: after the allowance, nothing exploited, learning on its share;
* ``over-budget``: nothing exploited and learning waits on a spent risk budget.

``--detail`` also prints, per order and task type, the call at which the
budget first stopped learning, the last model exploited, and each model's
outcomes, P(clears) and learning calls at that moment.

    python tools/trace_policy.py 2
    python tools/trace_policy.py 11 --orders 8 --detail
    python tools/trace_policy.py 11 --policy '{"learn_gate_obs": 30}'

A lab tool: it wraps the policy's planning step to read its state, which is
the policy's own business and may change.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_policy_dev import FALLBACK  # noqa: E402
from bench_policy_suite import _table, draw_triples  # noqa: E402

from tally_core.eval.replay import replay  # noqa: E402
from tally_core.policy.bandit import FloorBandit  # noqa: E402


class _Traced(FloorBandit):
    """FloorBandit that records, per call, the state its plan was made in."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.order = 0
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.first_over: dict[tuple[int, str], tuple[float, dict[str, tuple[int, float, int]]]] = {}
        self.last_exploit: dict[tuple[int, str], tuple[float, str]] = {}
        self._state = ("", "", "")

    def _plan(self, survivors, bar, safe, confidence, costs, **kw):  # type: ignore[no-untyped-def]
        plan = super()._plan(survivors, bar, safe, confidence, costs, **kw)
        memory, task = kw["memory"], kw.get("task_type") or ""
        if plan.exploit:
            state = "exploiting"
            self.last_exploit[self.order, task] = (memory.clock, plan.exploit)
        elif any("risk budget" in n for n in plan.notes):
            state = "over-budget"
            self.first_over.setdefault(
                (self.order, task),
                (
                    memory.clock,
                    {
                        c.name: (
                            round(c.view.n),
                            round(confidence[c.name], 2),
                            round(c.view.risky_calls),
                        )
                        for c in survivors
                    },
                ),
            )
        elif (memory.learn if self.cautious else memory.clock) < self.allowance:
            state = "allowance"  # cautious mode counts the allowance in learning calls
        else:
            state = "resolve"
        self._state = (task, state, safe)
        return plan

    def _pick(self, plan, uniform, normal, pending):  # type: ignore[no-untyped-def]
        choice = super()._pick(plan, uniform, normal, pending)
        task, state, safe = self._state
        self.counts[task, state, "fallback" if choice.model == safe else choice.phase] += 1
        return choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("triple", type=int, help="index in the suite's draw")
    ap.add_argument("--triples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--orders", type=int, default=8)
    ap.add_argument("--calls", type=int, default=8520)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--policy", default="", help="FloorBandit keyword arguments as JSON")
    ap.add_argument("--detail", action="store_true")
    a = ap.parse_args()
    floors = draw_triples(a.triples, a.seed, 1.0, True)[a.triple]
    policy = _Traced(**(json.loads(a.policy) if a.policy else {}))
    totals: collections.Counter[tuple[str, str]] = collections.Counter()
    for order in range(1, a.orders + 1):
        policy.order = order
        r = replay(_table(tuple(sorted(floors))), floor=floors, seed=order, calls=a.calls,
                   shuffle=True, warmup=a.warmup, routers=("tally",), best=FALLBACK,
                   tally_kwargs={"policy": policy})  # fmt: skip
        for task, d in r["routers"]["tally"]["per_task"].items():
            totals[task, "calls"] += d["calls"]
            totals[task, "below"] += d["violations"]
    print(f"triple {a.triple}: {floors}; {a.orders} orders x {a.calls} calls; per order:")
    for task in sorted(floors):
        print(
            f"{task} (floor {floors[task]}): {totals[task, 'calls'] / a.orders:.0f} calls, "
            f"{totals[task, 'below'] / a.orders:.0f} below the floor after the warm-up"
        )
        for (t, state, where), n in sorted(policy.counts.items()):
            if t == task:
                print(f"    {state:12s} {where:9s} {n / a.orders:7.0f}")
    if a.detail:
        for key in sorted(policy.first_over):
            clock, models = policy.first_over[key]
            print(f"order {key[0]} {key[1]}: budget spent at call {clock:.0f}, "
                  f"last exploited {policy.last_exploit.get(key)}")  # fmt: skip
            for m, (n, p, risky) in models.items():
                print(f"    {m:34s} outcomes {n:4d}  P(clears) {p:.2f}  learning calls {risky}")


if __name__ == "__main__":
    main()
