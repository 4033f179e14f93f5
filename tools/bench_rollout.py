"""A gradual rollout of the ``new-model`` scenario's new model: how many calls a degraded
one serves before it rolls itself back, and how long a good one takes to full traffic.

The ``new-model`` scenario: ``gpt-4.1-mini`` joins the pool a third of the way in. When
it joins, ``tally.rollout(...)`` starts with the given steps. Two variants:

- **good**: the scenario as it is (the new model is as good as or better than the cheap
  incumbents on the easy task types, worse than the floor on reasoning and architecture);
- **degraded**: its true quality lowered by ``--drop`` on every task type.

Reported over ``--seeds`` seeded stream orders (mean, p10, p90): the candidate's calls
served before each task type's rollout rolled back (and how many of them were below the
floor), and the calls (of the whole stream, counted from the join) until a task type's
rollout was done (at 100%, judged), with how many task types ended done, rolled back or
still running.

    python tools/bench_rollout.py [--seeds 10] [--calls 20000] [--steps 0.05,0.25,0.5,1]
                                  [--min-calls 50] [--drop 0.15] [--variants good,degraded]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tally_core.eval.sim import Scenario, TallyRouter, TaskSpec, load_scenario, simulate

CAND = "gpt-4.1-mini"


class RolloutRouter(TallyRouter):
    """Tally, starting a rollout of the new model the first call it is in the pool,
    and watching each task type's rollout move on."""

    def __init__(self, scenario: Scenario, seed: int, steps: tuple[float, ...],
                 min_calls: int, max_quality_drop: float) -> None:
        super().__init__(scenario, seed)
        self._args = (steps, min_calls, max_quality_drop)
        self.joined_at: int | None = None
        self.i = 0
        self.cand_calls: Counter[str] = Counter()  # per task type, while running
        self.below_floor: Counter[str] = Counter()
        self.ended: dict[str, tuple[str, int]] = {}  # task -> (status, calls since join)
        self._floors = {t.name: t.floor for t in scenario.tasks.values()}
        self._truth = {t.name: t.quality for t in scenario.tasks.values()}

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        if self.joined_at is None and CAND in pool:
            steps, min_calls, drop = self._args
            self.tally.rollout(CAND, steps=steps, min_calls=min_calls, max_quality_drop=drop)
            self.joined_at = self.i
        model = super().choose(task, envelope, pool)
        if model == CAND and task.name not in self.ended:
            self.cand_calls[task.name] += 1
            floor = self._floors[task.name]
            if floor is not None and self._truth[task.name][CAND] < floor:
                self.below_floor[task.name] += 1
        return model

    def observe(self, task: TaskSpec, *args: Any) -> None:
        super().observe(task, *args)
        self.i += 1
        if self.joined_at is None or task.name in self.ended:
            return
        cell = self.tally.rollouts.status(CAND).get(f"default/{task.name}")
        if cell is not None and cell["status"] != "running":
            self.ended[task.name] = (cell["status"], self.i - self.joined_at)


def degraded(scn: Scenario, drop: float) -> Scenario:
    out = copy.deepcopy(scn)
    for t in out.tasks.values():
        t.quality[CAND] = max(t.quality[CAND] - drop, 0.0)
    return out


def dist(xs: Sequence[float]) -> str:
    if not xs:
        return "n/a"
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    return f"mean {statistics.mean(s):.0f}, p10 {q(0.1):.0f}, p90 {q(0.9):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--steps", default="0.05,0.25,0.5,1")
    ap.add_argument("--min-calls", type=int, default=50)
    ap.add_argument("--max-quality-drop", type=float, default=0.02)
    ap.add_argument("--drop", type=float, default=0.15, help="the degraded model's loss")
    ap.add_argument("--variants", default="good,degraded")
    args = ap.parse_args()
    variants = set(args.variants.split(","))
    steps = tuple(float(x) for x in args.steps.split(","))
    base = load_scenario("new-model")
    print(f"new-model: {args.seeds} seeds x {args.calls} calls; rollout steps {steps}, "
          f"min_calls {args.min_calls}, max_quality_drop {args.max_quality_drop}")
    runs = [("good", base), (f"degraded (-{args.drop:g})", degraded(base, args.drop))]
    for label, scn in runs:
        if label.split()[0] not in variants:
            continue
        served, below, to_back, to_done, total_served = [], [], [], [], []
        ends: Counter[str] = Counter()
        per_task_done: dict[str, list[int]] = {}
        per_task_back: dict[str, list[int]] = {}
        for seed in range(1, args.seeds + 1):
            r = RolloutRouter(scn, seed, steps, args.min_calls, args.max_quality_drop)
            simulate(scn, [r], seed=seed, calls=args.calls)
            for task in scn.tasks:
                status, at = r.ended.get(task, ("running", 0))
                ends[status] += 1
                if status == "rolled-back":
                    served.append(r.cand_calls[task])
                    below.append(r.below_floor[task])
                    to_back.append(at)
                    per_task_back.setdefault(task, []).append(r.cand_calls[task])
                elif status == "done":
                    to_done.append(at)
                    per_task_done.setdefault(task, []).append(at)
            total_served.append(sum(r.cand_calls[t] for t, (s, _) in r.ended.items()
                                    if s == "rolled-back"))
            r.close()
        n = args.seeds * len(scn.tasks)
        print(f"\n{label}: of {n} (seed, task type) rollouts: {ends['done']} done, "
              f"{ends['rolled-back']} rolled back, {ends['running']} still running")
        print(f"  candidate calls served before a rollback, per task type: {dist(served)}"
              f" (below the floor: {dist(below)})")
        print(f"  ... summed over the task types that rolled back, per seed: "
              f"{dist(total_served)}")
        print(f"  calls since the join until the rollback: {dist(to_back)}")
        print(f"  calls since the join until done (100%, judged): {dist(to_done)}")
        for task in scn.tasks:
            d, b = per_task_done.get(task, []), per_task_back.get(task, [])
            print(f"    {task:20s} done {len(d):2d} ({dist(d)})  rolled back {len(b):2d} "
                  f"(served {dist(b)})")


if __name__ == "__main__":
    main()
