"""Issue 12's policy on many triples of real task types, floors drawn by rule.

Three hand-picked triples (``tools/bench_policy_dev.py``) are three draws.
This draws ``--triples`` triples of task types from
``../shared/data/llmrouter-outcomes.csv.gz`` (read in place, never copied),
seeded, and gives each task type a floor by the held-out rule:

* **hard** (probability ``--hard``, where the task type has one): the
  cheapest model that clears is 1.4-4 points above the floor, some candidate
  sits 1-4 points below it and none within 1 point below;
* **wide** otherwise: the cheapest model that clears is at least 8 points
  above, no candidate within 4 points below, at least two below;

with the fallback (the top model) above every floor. Each triple is replayed
over ``--orders`` seeded stream orders of ``--calls`` calls, in a process
pool, and reported with its floor difficulty (``tally_core.eval.difficulty``:
the calls below the floor that learning those floors takes whatever the
policy). The summary splits the triples by that difficulty: those whose
floors can be learnt within 1% of calls after the warm-up, and the rest.

    python tools/bench_policy_suite.py --triples 16 --orders 8
    python tools/bench_policy_suite.py --triples 16 --orders 8 --policy '{"cautious": true}'
    python tools/bench_policy_suite.py --triples 16 --orders 8 --hard-only
    python tools/bench_policy_suite.py --triples 16 --orders 8 --hard-only --per-task
    python tools/bench_policy_suite.py --triples 16 --orders 8 --hard-only \
        --policy '{"learn_gate_obs": 30}' --against defaults
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_policy_dev import DATA, FALLBACK, _pct, phase_means  # noqa: E402

from tally_core.eval.replay import EvalTable, read_table, replay  # noqa: E402
from tally_core.policy.bandit import FloorBandit  # noqa: E402

_lines: list[str] = []
_tables: dict[tuple[str, ...], EvalTable] = {}


def _all_lines() -> list[str]:
    if not _lines:
        with gzip.open(DATA, "rt") as f:
            _lines.extend(ln.rstrip("\n") for ln in f)
    return _lines


def _table(tasks: tuple[str, ...]) -> EvalTable:
    if tasks not in _tables:
        keep = set(tasks)
        lines = [ln for k, ln in enumerate(_all_lines()) if k == 0 or ln.split(",", 2)[1] in keep]
        _tables[tasks] = read_table(lines, "csv", name="+".join(tasks))
    return _tables[tasks]


def floor_choices(table: EvalTable, fallback: str) -> dict[str, dict[str, list[float]]]:
    """Per task type, the floors (on a 0.001 grid) that satisfy the hard
    and the wide rule (see the module docstring)."""
    sums: dict[tuple[str, str], list[float]] = {}
    for o in table.outcomes():
        s = sums.setdefault((o.task_type, o.model), [0.0, 0.0, 0.0])
        s[0] += o.quality
        s[1] += o.cost_usd
        s[2] += 1
    out: dict[str, dict[str, list[float]]] = {}
    for task in table.task_types:
        q = {m: s[0] / s[2] for (t, m), s in sums.items() if t == task}
        c = {m: s[1] / s[2] for (t, m), s in sums.items() if t == task}
        cands = [m for m in q if m != fallback and c[m] <= 0.9 * c[fallback]]
        hard: list[float] = []
        wide: list[float] = []
        for i in range(100, 951):
            f = i / 1000
            if q[fallback] < f + 0.005:
                continue
            clear = [m for m in cands if q[m] >= f]
            if not clear:
                continue
            cheapest = min(c[m] for m in clear)
            margin = min(q[m] for m in clear if c[m] <= cheapest * 1.01) - f
            below = [f - q[m] for m in cands if q[m] < f]
            if 0.014 <= margin <= 0.04 and any(0.01 <= d <= 0.04 for d in below):
                if not any(d < 0.01 for d in below):
                    hard.append(f)
            if margin >= 0.08 and len(below) >= 2 and not any(d <= 0.04 for d in below):
                wide.append(f)
        out[task] = {"hard": hard, "wide": wide}
    return out


def draw_triples(
    n: int, seed: int, p_hard: float, hard_only: bool = False
) -> list[dict[str, float]]:
    choices = floor_choices(_table_all(), FALLBACK)
    usable = sorted(t for t, ch in choices.items() if ch["hard"] or (ch["wide"] and not hard_only))
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tasks = rng.sample(usable, 3)
        floors = {}
        for t in tasks:
            ch = choices[t]
            kind = "hard" if ch["hard"] and (not ch["wide"] or rng.random() < p_hard) else "wide"
            floors[t] = rng.choice(ch[kind])
        out.append(floors)
    return out


def _table_all() -> EvalTable:
    return read_table(_all_lines(), "csv", name="all")


def _job(args: tuple[int, dict[str, float], int, int, int, str]) -> tuple[int, dict[str, Any]]:
    k, floors, seed, calls, warmup, policy = args
    kwargs = {"policy": FloorBandit(**json.loads(policy))} if policy else {}
    r = replay(_table(tuple(sorted(floors))), floor=floors, seed=seed, calls=calls, shuffle=True,
               warmup=warmup, routers=("tally",), best=FALLBACK, tally_kwargs=kwargs)  # fmt: skip
    per_task = {}
    best, oracle = r["routers"]["always-best"]["per_task"], r["routers"]["oracle"]["per_task"]
    for task, d in r["routers"]["tally"]["per_task"].items():
        gap = best[task]["cost_usd"] - oracle[task]["cost_usd"]
        share = (best[task]["cost_usd"] - d["cost_usd"]) / gap if gap > 0 else 1.0
        per_task[task] = (share, d["violations"] / d["calls"] if d["calls"] else 0.0)
    return k, {**r["routers"]["tally"], "difficulty": r["difficulty"], "task_shares": per_task}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--triples", type=int, default=16)
    ap.add_argument("--orders", type=int, default=8)
    ap.add_argument("--calls", type=int, default=8520)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--hard", type=float, default=0.75, help="chance a task type gets a hard floor")
    ap.add_argument(
        "--hard-only",
        action="store_true",
        help="only task types with a hard floor, each given one (the held-out set's shape)",
    )
    ap.add_argument("--seed", type=int, default=2026, help="seeds the draw of triples and floors")
    ap.add_argument("--policy", default="", help="FloorBandit keyword arguments as JSON")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument(
        "--against",
        default=None,
        help="also run this policy ('defaults' or JSON) on the same streams and print the "
        "paired differences with their standard errors",
    )
    ap.add_argument(
        "--per-task",
        action="store_true",
        help="also each task type at each floor: its share of savings, its calls below the floor",
    )
    a = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this benchmark needs the shared dev data")
    triples = draw_triples(a.triples, a.seed, 1.0 if a.hard_only else a.hard, a.hard_only)
    jobs = [
        (k, fl, s, a.calls, a.warmup, a.policy)
        for k, fl in enumerate(triples)
        for s in range(1, a.orders + 1)
    ]
    against = None if a.against is None else ("" if a.against == "defaults" else a.against)
    ref_jobs = [] if against is None else [(*j[:5], against) for j in jobs]
    with Pool(a.procs) as pool:
        done = pool.map(_job, jobs + ref_jobs)
    done, ref = done[: len(jobs)], done[len(jobs) :]
    policy = a.policy or "defaults"
    print(f"{a.triples} triples x {a.orders} orders x {a.calls} calls, policy {policy}")
    print("triple  share mean  p10   | viol>w mean  p90   | difficulty>w | floors")
    rows = []
    for k, fl in enumerate(triples):
        rs = [r for kk, r in done if kk == k]
        sh = [r["oracle_savings_share"] for r in rs]
        vw = [100 * r["violation_rate"] for r in rs]
        diff = rs[0]["difficulty"]
        hard = 100 * sum(max(d["expected_violations"] - a.warmup, 0.0) for d in diff.values())
        hard /= a.calls
        rows.append((statistics.mean(sh), statistics.mean(vw), _pct(vw, 0.9), hard))
        print(
            f"{k:6}  {statistics.mean(sh):.3f}      {_pct(sh, 0.1):.3f} | "
            f"{statistics.mean(vw):5.2f}%      {_pct(vw, 0.9):5.2f}% | {hard:5.2f}%       | "
            + ", ".join(f"{t}={f:g}" for t, f in fl.items())
        )
    if a.per_task:
        _print_per_task(triples, done)
    phases = phase_means([r for _, r in done])
    print(
        "calls below the floor per stream (from call 1), by phase: "
        + (", ".join(f"{p} {n:.0f}" for p, n in sorted(phases.items())) or "none")
    )
    for name, pick in (
        ("all", rows),
        ("learnable within 1%", [r for r in rows if r[3] <= 1.0]),
        ("not learnable within 1%", [r for r in rows if r[3] > 1.0]),
    ):
        if not pick:
            continue
        met = sum(1 for r in pick if r[0] >= 0.9 and r[1] <= 1.0 and r[2] <= 3.0)
        print(
            f"{name}: {len(pick)} triples, share {statistics.mean(r[0] for r in pick):.3f}, "
            f"violations {statistics.mean(r[1] for r in pick):.2f}% (mean of triple means), "
            f"all three targets met on {met}"
        )
    sh = [r["oracle_savings_share"] for _, r in done]
    vw = [100 * r["violation_rate"] for _, r in done]
    print(
        f"per stream ({len(done)}): share sd {_sd(sh):.3f} (standard error of the "
        f"mean {_se(sh):.3f}), violations sd {_sd(vw):.2f} points ({_se(vw):.2f})"
    )
    if ref:
        dsh = [
            r["oracle_savings_share"] - q["oracle_savings_share"]
            for (_, r), (_, q) in zip(done, ref, strict=True)
        ]
        dvw = [
            100 * (r["violation_rate"] - q["violation_rate"])
            for (_, r), (_, q) in zip(done, ref, strict=True)
        ]
        print(
            f"against {a.against}, paired over the same {len(done)} streams: share "
            f"{statistics.mean(dsh):+.3f} (standard error {_se(dsh):.3f}), violations "
            f"{statistics.mean(dvw):+.2f} points ({_se(dvw):.2f})"
        )


def _sd(xs: list[float]) -> float:
    """Sample standard deviation of ``xs`` (0 for fewer than two)."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _se(xs: list[float]) -> float:
    """Standard error of the mean of ``xs``."""
    return _sd(xs) / len(xs) ** 0.5 if xs else 0.0


def _print_per_task(
    triples: list[dict[str, float]], done: list[tuple[int, dict[str, Any]]]
) -> None:
    """Each task type at each floor over every stream it is in: the mean
    share of its own savings (always-best minus the oracle) and its calls
    below the floor after its warm-up, as a share of its calls."""
    agg: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for k, r in done:
        for task, v in r["task_shares"].items():
            agg.setdefault((task, triples[k][task]), []).append(v)
    print("task type           floor  streams  share  below the floor")
    for (task, floor), vs in sorted(agg.items()):
        share = statistics.mean(v[0] for v in vs)
        below = 100 * statistics.mean(v[1] for v in vs)
        print(f"{task:18}  {floor:.3f}  {len(vs):7}  {share:5.2f}  {below:5.2f}%")


if __name__ == "__main__":
    main()
