"""End-to-end: route a mixed workload with inferred envelopes vs hand-labelled ones.

    python tools/sim_infer.py                 # 10 seeds x 3,000 calls
    python tools/sim_infer.py --seeds 20 --calls 5000

The workload draws prompts from ``tests/data/infer_prompts_holdout.jsonl``
(prompts the inference model never saw), each with its true task type. Each
(task type, model) pair has a true success rate (below); an outcome is a
seeded Bernoulli draw of it. The same stream, in the same order, is routed
by a fresh ``Tally`` four ways:

- ``labelled``: ``task_type`` is the true label (what a user who labels
  every call gets);
- ``inferred``: ``task_type`` and ``complexity`` from ``tally_core.infer``;
- ``unlabelled``: every call ``general`` (today's default without labels);
- ``fallback``: every call to the fallback model (the cost reference).

Reported per way, as mean / p10 / p90 over seeds: the saving against
``fallback`` (1 - cost / fallback cost) and the violation rate (share of
calls sent to a model whose true rate for the call's true task type is
below the floor). Synthetic qualities: this measures what inference does to
routing, not any real model's quality.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tally_core import Tally  # noqa: E402
from tally_core.infer import infer_task  # noqa: E402

HOLDOUT = ROOT / "tests" / "data" / "infer_prompts_holdout.jsonl"
POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
FALLBACK = "gpt-4o"
FLOOR = 0.85
# The cheap model is good enough for the light task types only; the middle
# one for all but the hardest; the fallback for everything.
LIGHT = {"translation", "qa-simple", "formatting", "classification", "conversation",
         "extraction", "summarisation"}
HARDEST = {"architecture-design", "reasoning", "code-debug"}


def true_rate(task_type: str, model: str) -> float:
    if model == "gpt-4o":
        return 0.97
    if model == "claude-haiku-4-5":
        return 0.75 if task_type in HARDEST else 0.93
    return 0.95 if task_type in LIGHT else 0.55


def run(way: str, stream: list[dict[str, Any]], seed: int) -> tuple[float, float]:
    tally = Tally(POOL, fallback=FALLBACK, store=":memory:", seed=seed, background=False)
    rng = random.Random(seed * 7919 + 1)
    cost = 0.0
    violations = 0
    try:
        for row in stream:
            if way == "fallback":
                model = FALLBACK
                d = None
            else:
                if way == "labelled":
                    env: dict[str, Any] = {"task_type": row["t"]}
                elif way == "inferred":
                    r = row["_inferred"]
                    env = {"task_type": r.task_type, "complexity": r.complexity_level}
                else:
                    env = {"task_type": "general"}
                env["quality_floor"] = FLOOR
                d = tally.route(env)
                model = d.model
            spec = tally.catalog[model]
            call_cost = (500 * (spec.input_cost_per_mtok or 0)
                         + 300 * (spec.output_cost_per_mtok or 0)) / 1e6
            cost += call_cost
            rate = true_rate(row["t"], model)
            violations += rate < FLOOR
            ok = rng.random() < rate
            if d is not None:
                tally.telemetry(d, success=ok, input_tokens=500, output_tokens=300,
                                cost_usd=call_cost)
        tally.flush()
    finally:
        tally.close()
    return cost, violations / len(stream)


def stats(xs: list[float]) -> str:
    s = sorted(xs)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return f"mean {statistics.fmean(xs):6.1%}  p10 {p(0.1):6.1%}  p90 {p(0.9):6.1%}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    rows = [json.loads(line) for line in HOLDOUT.read_text("utf-8").splitlines() if line]
    for r in rows:
        msgs = ([{"role": "system", "content": r["sys"]}] if r.get("sys") else []) + [
            {"role": "user", "content": r["p"]}]
        r["_inferred"] = infer_task(msgs)
    acc = sum(r["_inferred"].task_type == r["t"] for r in rows) / len(rows)
    print(f"workload: {args.calls} calls/seed drawn from {len(rows)} held-out prompts; "
          f"inference top-1 on them {acc:.1%}; floor {FLOOR}")
    ways = ("labelled", "inferred", "unlabelled", "fallback")
    saving: dict[str, list[float]] = {w: [] for w in ways}
    viol: dict[str, list[float]] = {w: [] for w in ways}
    ratio: list[float] = []
    for seed in range(args.seeds):
        rng = random.Random(seed)
        stream = [rng.choice(rows) for _ in range(args.calls)]
        costs = {}
        for w in ways:
            costs[w], v = run(w, stream, seed)
            viol[w].append(v)
        for w in ways:
            saving[w].append(1 - costs[w] / costs["fallback"])
        ratio.append(saving["inferred"][-1] / saving["labelled"][-1])
    for w in ways:
        print(f"{w:>10}: saving {stats(saving[w])} | violations {stats(viol[w])}")
    print(f"inferred saving / labelled saving: {stats(ratio)}")


if __name__ == "__main__":
    main()
