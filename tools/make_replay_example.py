"""Rebuild tally_core/eval/scenarios/replay-example.csv: an evaluation table in which
every model of a scenario answered the same prompts and was graded.

Run: python tools/make_replay_example.py [--scenario seed-landscape]
[--prompts 300] [--seed 1] [--rho 0.5] [--out PATH]

Each prompt gets a task type drawn with the scenario's traffic mix, an input
size, and a difficulty shared by every model (correlation ``rho``: a prompt
that is hard for one model tends to be hard for the others, as in real
evaluation runs). A model's grade keeps the scenario's distribution for its
(task type, model): a 0-1 score with the spread of a Beta around the true
mean, or pass/fail (``true``/``false``) for ``bernoulli`` task types. Output
tokens and latency vary per model; ``cost_usd`` is the catalog price of the
row's tokens at generation time, so the file replays the same everywhere.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np

from tally_core.catalog import Catalog, ModelSpec
from tally_core.eval.sim import load_scenario

OUT = Path(__file__).resolve().parent.parent / "tally_core" / "scenarios" / "replay-example.csv"
COLUMNS = [
    "prompt_id",
    "task_type",
    "model",
    "quality",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "cost_usd",
]


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def make(scenario: str, prompts: int, seed: int, rho: float) -> list[list[str]]:
    sc = load_scenario(scenario)
    catalog = Catalog([ModelSpec(**m) if isinstance(m, dict) else m for m in sc.models])
    models = sc.model_names()
    tasks = list(sc.tasks.values())
    rng = np.random.default_rng(seed)
    shares = np.array([t.share for t in tasks], dtype=float)
    task_idx = rng.choice(len(tasks), size=prompts, p=shares / shares.sum())
    rows = []
    for i in range(prompts):
        task = tasks[task_idx[i]]
        difficulty = float(rng.standard_normal())
        it = max(1, int(task.input_tokens * rng.lognormal(0.0, 0.3)))
        for m in models:
            z = rho * difficulty + math.sqrt(1.0 - rho * rho) * float(rng.standard_normal())
            q = task.quality[m]
            if task.outcome == "bernoulli":
                quality = "true" if _phi(z) < q else "false"
            else:
                sd = math.sqrt(q * (1 - q) / (task.concentration + 1))
                quality = f"{min(max(q - sd * z, 0.0), 1.0):.3f}"
            ot = max(1, int(task.output_tokens * rng.lognormal(0.0, 0.3)))
            latency = sc.latency_ms.get(m, 1000.0) * rng.lognormal(0.0, 0.25)
            cost = catalog[m].estimate_cost_usd(it, ot)
            rows.append(
                [
                    f"p{i + 1:04d}",
                    task.name,
                    m,
                    quality,
                    str(it),
                    str(ot),
                    f"{latency:.0f}",
                    f"{cost:.6g}",
                ]
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="seed-landscape")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = make(args.scenario, args.prompts, args.seed, args.rho)
    with args.out.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
