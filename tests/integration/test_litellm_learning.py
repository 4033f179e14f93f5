"""End to end: a router that learns, from scored calls, which model each task type needs."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from tally_litellm import get_decision
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    expected_cost,
    installed,
    litellm_callbacks_restored,
    rows,
)

# What a grader would find: mini is good enough for simple QA, not for debugging.
TRUE_QUALITY = {
    "qa-simple": {"gpt-4o-mini": 0.92, "claude-haiku-4-5": 0.93, "gpt-4o": 0.95},
    "code-debug": {"gpt-4o-mini": 0.35, "claude-haiku-4-5": 0.90, "gpt-4o": 0.96},
}
FLOOR = 0.8
ROUNDS = 40


def make_scorer(seed: int) -> Any:
    noise = random.Random(seed)

    def scorer(request: dict[str, Any], response: Any) -> float:
        q = TRUE_QUALITY[request["task_type"]][request["model"]] + noise.uniform(-0.04, 0.04)
        return min(max(q, 0.0), 1.0)

    return scorer


def check(picks: dict[str, list[str]]) -> None:
    late_qa = Counter(picks["qa-simple"][-20:])
    late_debug = Counter(picks["code-debug"][-20:])
    assert late_qa["gpt-4o-mini"] >= 16, late_qa  # the cheap model carries simple QA
    assert late_debug["gpt-4o-mini"] == 0, late_debug  # never below the floor once seen failing
    assert late_debug["claude-haiku-4-5"] >= 14, late_debug  # the cheapest that clears it


@pytest.mark.parametrize("seed", [7, 11])
def test_cheap_model_takes_over_where_it_is_good_enough(seed):
    picks: dict[str, list[str]] = {"qa-simple": [], "code-debug": []}
    with installed(scorer=make_scorer(seed), tally_kwargs={"seed": seed}) as (
        router, tally, strategy,
    ):
        for _ in range(ROUNDS):
            for task in picks:
                r = router.completion(
                    model="auto", messages=MSGS,
                    metadata={"tally": {"task_type": task, "quality_floor": FLOOR}},
                )
                picks[task].append(get_decision(r)["model"])
                assert strategy.flush()  # learn from this call before the next
        check(picks)
        # What was learned is in the ledger too: one scored row per call.
        got = rows(tally)
        assert len(got) == 2 * ROUNDS
        assert all(row["quality"] is not None and row["success"] == 1 for row in got)
        # Against sending every call to the fallback, at the same token counts.
        spend = sum(row["cost_usd"] for row in got)
        all_4o = sum(expected_cost("gpt-4o", row["input_tokens"], row["output_tokens"])
                     for row in got)
        assert spend < 0.5 * all_4o


def test_learning_through_acompletion():
    picks: dict[str, list[str]] = {"qa-simple": [], "code-debug": []}

    async def go(router: Any, strategy: Any) -> None:
        for _ in range(ROUNDS):
            for task in picks:
                r = await router.acompletion(
                    model="auto", messages=MSGS,
                    metadata={"tally": {"task_type": task, "quality_floor": FLOOR}},
                )
                picks[task].append(get_decision(r)["model"])
                assert await strategy.aflush()

    with installed(scorer=make_scorer(3), tally_kwargs={"seed": 3}) as (router, tally, strategy):
        asyncio.run(go(router, strategy))
    check(picks)
