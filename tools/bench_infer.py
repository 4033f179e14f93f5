"""Time ``tally_core.infer.infer_task`` on long prompts (figures for BENCHMARKS.md).

    python tools/bench_infer.py            # 2,000- and 100,000-token prompts
    python tools/bench_infer.py --calls 20000

A prompt is built from the project's own tune prompts (tests/data), padded
to the target size with a seeded shuffle of their sentences; ~4 characters
per token. Each size is timed over every prompt of a seeded sample, one call
at a time, by wall clock (``perf_counter_ns``) and by the thread's CPU time
(``thread_time_ns``: what the call costs when other processes share the
cores); the model is loaded before timing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tally_core.infer import infer_task  # noqa: E402

TUNE = ROOT / "tests" / "data" / "infer_prompts_tune.jsonl"


def prompts(tokens: int, n: int, seed: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in TUNE.read_text(encoding="utf-8").splitlines() if line]
    rng = random.Random(seed)
    filler = [r["p"] for r in rows]
    out = []
    for _ in range(n):
        ask = rng.choice(rows)
        body: list[str] = []
        size = 0
        while size < tokens * 4:
            s = rng.choice(filler)
            body.append(s)
            size += len(s) + 1
        text = ask["p"] + "\n\n" + "\n".join(body)
        out.append([{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": text[: tokens * 4]}])
    return out


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    infer_task([{"role": "user", "content": "warm up"}])
    for tokens in (2_000, 100_000):
        calls = args.calls if tokens <= 2_000 else max(args.calls // 5, 200)
        sample = prompts(tokens, 50, args.seed)
        wall: list[float] = []
        cpu: list[float] = []
        for i in range(calls):
            m = sample[i % len(sample)]
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            infer_task(m)
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            wall.append((t1 - t0) / 1000)
            cpu.append((c1 - c0) / 1000)
        for name, times in (("wall", wall), ("thread CPU", cpu)):
            print(f"{tokens:>7,} tokens ({len(sample[0][1]['content']):,} chars), {calls} calls, "
                  f"{name}: median {statistics.median(times):.1f} us, "
                  f"mean {statistics.fmean(times):.1f}, p10 {pct(times, 0.10):.1f}, "
                  f"p90 {pct(times, 0.90):.1f}, p99 {pct(times, 0.99):.1f}")


if __name__ == "__main__":
    main()
