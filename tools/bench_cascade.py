"""Cascade vs bandit vs always-best on a simulated workload, over many seeded stream orders.

Each call draws a task type from the scenario (default ``seed-landscape``);
a model's answer is good with the scenario's true quality for that task type
(0/1), and the cascade's check sees it through a noisy lens: a bad answer
slips through with probability ``1 - recall``, a good one is rejected with
probability ``false_reject``. Every call costs the scenario's tokens at
catalog prices.

- ``always-best``: every call on the scenario's fallback (the premium model);
- ``cascade (fixed entry)``: the article's cascade, tiers cheapest first,
  always starting at the bottom (``learn_entry=False``);
- ``cascade (learned entry)``: Tally's, starting where the expected cost of
  the whole cascade is lowest for the task type;
- ``bandit``: ``Tally.route`` at the scenario's floors, one call per request.

Reported per router, over the seeds: cost per call as a share of
always-best's, the share of answers delivered that are good (the quality the
user gets), calls per request, and for the cascades the share answered at
each tier. Run:

    python tools/bench_cascade.py [--seeds 10] [--calls 4000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from tally_core import Tally
from tally_core.cascade import Cascade

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict[str, Any]:
    for folder in ("tally_core/eval/scenarios", "tally_core/scenarios"):
        path = ROOT / folder / f"{name}.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
    raise SystemExit(f"no scenario {name!r}")


def always_yes(request: Any, response: Any) -> bool:
    return bool(response)  # the simulated check's verdict rides in the response


def run(scn: dict[str, Any], seed: int, calls: int, recall: float, false_reject: float
        ) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    tasks = scn["tasks"]
    names, shares = list(tasks), [tasks[t]["share"] for t in tasks]
    fallback = scn["fallback"]
    models = [m if isinstance(m, str) else m["name"] for m in scn["models"]]
    stream = rng.choices(names, weights=shares, k=calls)
    # One world for every router: each call's answer per model, good or bad.
    world = [{m: rng.random() < tasks[t]["quality"][m] for m in models} for t in stream]
    verdict_noise = [{m: rng.random() for m in models} for _ in stream]

    def passes(i: int, m: str) -> bool:
        good, u = world[i][m], verdict_noise[i][m]
        return (u >= false_reject) if good else (u >= recall)

    out: dict[str, dict[str, Any]] = {}
    with Tally(models, fallback=fallback, store=":memory:", seed=seed, background=False) as t:
        spec = {m: t.catalog[m] for m in models}

        def cost(task: str, m: str) -> float:
            k = tasks[task]
            return spec[m].estimate_cost_usd(int(k["input_tokens"]), int(k["output_tokens"]))

        best = sum(cost(task, fallback) for task in stream)
        good = sum(world[i][fallback] for i in range(calls))
        out["always-best"] = {"cost_share": 1.0, "good": good / calls, "calls_per_request": 1.0}

        for label, learn in (("cascade (fixed entry)", False), ("cascade (learned entry)", True)):
            plan = Cascade(checks=[always_yes], learn_entry=learn, seed=seed)
            with Tally(models, fallback=fallback, store=":memory:", seed=seed,
                       background=False) as tc:
                spent, delivered, attempts, tiers = 0.0, 0, 0, [0] * len(models)
                for i, task in enumerate(stream):
                    crun = plan.start(tc, {"task_type": task})
                    while (step := crun.next_tier()) is not None:
                        tier, m = step
                        d = tc.route(crun.envelope_for(tier))
                        verdict = passes(i, d.model)
                        c = cost(task, d.model)
                        spent += c
                        attempts += 1
                        k = tasks[task]
                        crun.record(tier, {}, verdict, cost_usd=c, latency_ms=0.0,
                                    decision_id=d.decision_id, model=d.model,
                                    grade=lambda q, d=d, k=k, c=c: tc.telemetry(
                                        d, quality=q, input_tokens=int(k["input_tokens"]),
                                        output_tokens=int(k["output_tokens"]), cost_usd=c))
                    last = crun.attempts[-1]
                    delivered += world[i][last.model]
                    tiers[min(last.tier, len(tiers) - 1)] += 1
                out[label] = {"cost_share": spent / best, "good": delivered / calls,
                              "calls_per_request": attempts / calls,
                              "tiers": [round(n / calls, 4) for n in tiers[:len(crun.tiers)]]}

        with Tally(models, fallback=fallback, store=":memory:", seed=seed,
                   background=False) as tb:
            spent, delivered = 0.0, 0
            for i, task in enumerate(stream):
                k = tasks[task]
                d = tb.route({"task_type": task, "quality_floor": k["floor"],
                              **(k.get("envelope") or {})})
                ok = world[i][d.model]
                c = cost(task, d.model)
                spent += c
                delivered += ok
                tb.telemetry(d, quality=1.0 if ok else 0.0, input_tokens=int(k["input_tokens"]),
                             output_tokens=int(k["output_tokens"]), cost_usd=c)
            out["bandit"] = {"cost_share": spent / best, "good": delivered / calls,
                             "calls_per_request": 1.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="seed-landscape")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--recall", type=float, default=0.9,
                    help="share of bad answers the check rejects")
    ap.add_argument("--false-reject", type=float, default=0.03,
                    help="share of good answers the check rejects")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    scn = load(args.scenario)
    runs = [run(scn, seed, args.calls, args.recall, args.false_reject)
            for seed in range(1, args.seeds + 1)]

    def dist(xs: list[float]) -> tuple[float, float, float]:
        q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
        return statistics.mean(xs), q[0], q[-1]

    print(f"{args.scenario}: {args.seeds} seeds x {args.calls} calls; check recall "
          f"{args.recall}, false rejects {args.false_reject}")
    print(f"{'router':26s} {'cost vs best (mean p10 p90)':30s} {'good answers':22s} "
          "calls/req  tiers")
    summary: dict[str, Any] = {}
    for name in runs[0]:
        c = dist([r[name]["cost_share"] for r in runs])
        g = dist([r[name]["good"] for r in runs])
        k = statistics.mean(r[name]["calls_per_request"] for r in runs)
        tiers = runs[0][name].get("tiers")
        mean_tiers = ([round(statistics.mean(r[name]["tiers"][i] for r in runs), 3)
                       for i in range(len(tiers))] if tiers else None)
        summary[name] = {"cost_share": c, "good": g, "calls_per_request": k, "tiers": mean_tiers}
        print(f"{name:26s} {c[0]:.3f} ({c[1]:.3f} {c[2]:.3f})          "
              f"{g[0]:.3f} ({g[1]:.3f} {g[2]:.3f})   {k:.2f}      {mean_tiers or ''}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "summary": summary}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
