"""A reference policy for issue 12: where a Bayes-style index lands on the
dev triples, to tell the policy's limits from the data's.

Not Tally: a stand-alone replay of each task type of a triple (2,840 calls,
the prompts cycled in a seeded shuffle) against one rule. Each candidate
(at least 10% cheaper per call than the fallback) is valued by the exact
dynamic programme of a one-armed bandit whose other arm is the fallback:
a call to it earns its saving g (a share of the fallback's cost) less
``mu`` x P(its quality is below the floor) under a uniform Beta prior on
its 0/1 outcomes, it may be abandoned for the fallback at any time, and the
calls left are the task type's. Each call goes to the candidate of highest
value, or the fallback when none is positive. ``mu`` is the price of a call
below the floor, in calls of the fallback: the one knob.

Reads ``../shared/data/llmrouter-outcomes.csv.gz`` in place (numpy only).

    python tools/frontier_index.py --mu 2 4 8 16
"""

from __future__ import annotations

import argparse
import functools
import gzip
import sys
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_policy_dev import DATA, FALLBACK, TRIPLES  # noqa: E402

CALLS, WARMUP, GRID = 2840, 100, 250
_data: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}


def _load() -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """task type -> prompt -> model -> (quality, cost)."""
    if not _data:
        out: dict[str, dict[str, dict[str, tuple[float, float]]]] = defaultdict(dict)
        with gzip.open(DATA, "rt") as f:
            next(f)
            for line in f:
                pid, task, model, q, _i, _o, cost = line.rstrip("\n").split(",")
                out[task].setdefault(pid, {})[model] = (float(q), float(cost))
        _data.update(out)
    return _data


@functools.cache
def _logfact(n: int) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1)))))


def _p_clears(n: int, floor: float) -> np.ndarray:
    """P(q >= floor | s successes in n, uniform prior) for s = 0..n, which is
    P(Binomial(n + 1, floor) <= s)."""
    m = n + 1
    lf = _logfact(m)
    k = np.arange(m + 1)
    logpmf = lf[m] - lf[k] - lf[m - k] + k * np.log(floor) + (m - k) * np.log1p(-floor)
    return np.minimum(np.cumsum(np.exp(logpmf))[: n + 1], 1.0)


@functools.cache
def _values(floor: float, g: float, mu: float, c: int) -> list[np.ndarray]:
    """V[n][s]: the value of a candidate with s successes in n calls when
    c - n calls are left (backward induction from V[c] = 0)."""
    out: list[np.ndarray] = [np.zeros(0)] * (c + 1)
    nxt = np.zeros(c + 2)
    for n in range(c - 1, -1, -1):
        s = np.arange(n + 1)
        reward = g - mu * (1.0 - _p_clears(n, floor))
        p = (s + 1) / (n + 2)
        cur = np.maximum(reward + p * nxt[1 : n + 2] + (1 - p) * nxt[: n + 1], 0.0)
        out[n] = cur
        nxt = cur
    return out


def _run(args: tuple[str, int, float]) -> tuple[str, float, float, float]:
    triple, seed, mu = args
    data = _load()
    rng = np.random.default_rng(seed)
    saved = gap = 0.0
    viol = counted = 0
    for task, floor in TRIPLES[triple].items():
        rows = data[task]
        pids = sorted(rows)
        order: list[str] = []
        while len(order) < CALLS:
            order += [pids[i] for i in rng.permutation(len(pids))]
        models = sorted(next(iter(rows.values())))
        truth = {m: float(np.mean([rows[p][m][0] for p in pids])) for m in models}
        cost = {m: float(np.mean([rows[p][m][1] for p in pids])) for m in models}
        cf = cost[FALLBACK]
        cands = [m for m in models if m != FALLBACK and cost[m] <= 0.9 * cf]
        oracle = min((m for m in models if truth[m] >= floor), key=lambda m: cost[m])
        n = dict.fromkeys(cands, 0)
        s = dict.fromkeys(cands, 0)
        for t, pid in enumerate(order[:CALLS]):
            pick, best = FALLBACK, 0.0
            for m in cands:
                c = max(GRID, round((n[m] + CALLS - t) / GRID) * GRID)
                if n[m] >= c:
                    continue
                v = _values(floor, round((cf - cost[m]) / cf, 2), mu, c)[n[m]][s[m]]
                if v > best:
                    pick, best = m, v
            q, paid = rows[pid][pick]
            saved += rows[pid][FALLBACK][1] - paid
            gap += rows[pid][FALLBACK][1] - rows[pid][oracle][1]
            if t >= WARMUP:
                counted += 1
                viol += truth[pick] < floor
            if pick != FALLBACK:
                n[pick] += 1
                s[pick] += int(q >= 0.5)
    return triple, mu, saved / gap, viol / counted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mu", type=float, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--orders", type=int, default=12)
    ap.add_argument("--triples", default="ABC")
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this benchmark needs the shared dev data")
    jobs = [(t, s, mu) for mu in a.mu for t in a.triples for s in range(1, a.orders + 1)]
    with Pool(a.procs) as pool:
        done = pool.map(_run, jobs)
    print(f"{a.orders} orders x {CALLS} calls per task type; violations after {WARMUP} calls")
    print("mu     triple  share mean  p10    | viol mean  p90")
    for mu in a.mu:
        for t in a.triples:
            sh = [x for tt, m, x, _ in done if tt == t and m == mu]
            vi = [100 * v for tt, m, _, v in done if tt == t and m == mu]
            print(
                f"{mu:<6g} {t:6}  {np.mean(sh):.3f}       {np.percentile(sh, 10):.3f}  | "
                f"{np.mean(vi):5.2f}%    {np.percentile(vi, 90):5.2f}%"
            )


if __name__ == "__main__":
    main()
