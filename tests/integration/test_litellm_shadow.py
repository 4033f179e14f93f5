"""Shadow tests through a real litellm.Router (mock responses): copies after the caller has
its answer, recorded as evidence for the candidate, never in the caller's way."""

from __future__ import annotations

import asyncio
import time

import litellm
import pytest

from tally_core import Tally
from tally_litellm import TallyStrategy, get_decision
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    POOL,
    dep,
    litellm_callbacks_restored,
)

TASK = {"tally": {"task_type": "qa-simple"}}
N = 8


def score(request, response):
    # The mock answers say how good they are.
    return 0.9 if "good" in response.choices[0].message.content else 0.2


def make(candidate_reply: str = "meh", **candidate_params) -> litellm.Router:
    # The callers' group serves only gpt-4o; the candidates live in another group.
    return litellm.Router(num_retries=0, model_list=[
        dep("openai/gpt-4o", "4o", reply="good answer"),
        dep("gpt-4o-mini", "mini", group="cheap", reply=candidate_reply, **candidate_params),
        dep("claude-haiku-4-5", "haiku", group="cheap", reply="good too"),
    ])


@pytest.fixture
def tally():
    t = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=4)
    yield t
    t.close()


def rows_of(tally, model):
    return [r for r in tally.ledger.rows() if r["model"] == model]


def test_sampled_calls_get_a_shadow_copy_recorded_as_evidence_and_paired(tally):
    router = make()
    strategy = TallyStrategy(tally, scorer=score).install(router)
    tally.shadow("gpt-4o-mini", sample=1.0)
    try:
        primaries = [router.completion(model="auto", messages=MSGS, metadata=dict(TASK))
                     for _ in range(N)]
        assert tally.flush(10.0)
        assert {get_decision(r)["model"] for r in primaries} == {"gpt-4o"}
        shadows = rows_of(tally, "gpt-4o-mini")
        assert len(shadows) == N and all("shadow" in r["tags"] for r in shadows)
        primary_ids = {get_decision(r)["decision_id"] for r in primaries}
        assert {t[len("shadow-of:"):] for r in shadows for t in r["tags"]
                if t.startswith("shadow-of:")} == primary_ids
        mini = next(s for s in tally.stats("qa-simple") if s["model"] == "gpt-4o-mini")
        assert mini["calls"] == N and mini["mean_quality"] == pytest.approx(0.2, abs=0.05)
        (pair,) = tally.shadow_report()
        assert (pair.task_type, pair.candidate, pair.pairs) == ("qa-simple", "gpt-4o-mini", N)
        assert pair.quality_diff == pytest.approx(-0.7)
        assert pair.shadow_cost_usd < pair.primary_cost_usd
    finally:
        strategy.close()


def test_a_slow_or_failing_shadow_never_delays_or_fails_the_caller(tally):
    router = make(candidate_reply="litellm.InternalServerError", mock_delay=0.4)
    strategy = TallyStrategy(tally, scorer=score).install(router)
    try:
        router.completion(model="auto", messages=MSGS, metadata=dict(TASK))  # warm up
        t0 = time.perf_counter()
        for _ in range(3):
            router.completion(model="auto", messages=MSGS, metadata=dict(TASK))
        without = time.perf_counter() - t0
        assert tally.flush(10.0)  # those calls are reported before the shadow test starts
        tally.shadow("gpt-4o-mini", sample=1.0)
        t0 = time.perf_counter()
        for _ in range(3):
            r = router.completion(model="auto", messages=MSGS, metadata=dict(TASK))
            assert r.choices[0].message.content == "good answer"
        with_shadows = time.perf_counter() - t0
        # Three 0.4 s shadows in the callers' way would add >= 1.2 s: a wide bound, not a
        # benchmark.
        assert with_shadows < without + 0.6
        assert tally.flush(10.0)  # and flush waits for the shadows
        failed = rows_of(tally, "gpt-4o-mini")
        assert len(failed) == 3 and all(r["success"] == 0 for r in failed)
        assert {r["error"] for r in failed} == {"InternalServerError"}
    finally:
        strategy.close()


def test_shadows_obey_the_callers_rules(tally):
    router = make()
    strategy = TallyStrategy(tally, scorer=score).install(router)
    tally.shadow("claude-haiku-4-5", sample=1.0)
    try:
        only_openai = {"tally": {"task_type": "qa-simple", "allowed_providers": ["openai"]}}
        router.completion(model="auto", messages=MSGS, metadata=only_openai)
        pinned = {"tally": {"task_type": "qa-simple", "allowed_models": ["gpt-4o"]}}
        router.completion(model="auto", messages=MSGS, metadata=pinned)
        assert tally.flush(10.0)
        assert rows_of(tally, "claude-haiku-4-5") == []
        router.completion(model="auto", messages=MSGS, metadata=dict(TASK))
        assert tally.flush(10.0)
        assert len(rows_of(tally, "claude-haiku-4-5")) == 1  # allowed: copied
    finally:
        strategy.close()


def test_a_candidate_below_the_floor_is_still_evaluated_but_never_serves(tally):
    router = litellm.Router(num_retries=0, model_list=[
        dep("openai/gpt-4o", "4o", reply="good answer"),
        dep("gpt-4o-mini", "mini", reply="meh"),  # in the callers' group this time
    ])
    strategy = TallyStrategy(tally, scorer=score).install(router)
    tally.shadow("gpt-4o-mini", sample=1.0)
    floor = {"tally": {"task_type": "qa-simple", "quality_floor": 0.8}}
    try:
        for _ in range(40):
            tally.telemetry(model="gpt-4o-mini", task_type="qa-simple", quality=0.1)
        assert tally.flush()
        served = [get_decision(router.completion(model="auto", messages=MSGS,
                                                 metadata=floor))["model"] for _ in range(5)]
        assert tally.flush(10.0)
        assert served == ["gpt-4o"] * 5
        assert len([r for r in rows_of(tally, "gpt-4o-mini") if "shadow" in (r["tags"] or ())]) == 5
    finally:
        strategy.close()


def test_async_calls_shadow_on_the_loop(tally):
    router = make(candidate_reply="good enough")
    strategy = TallyStrategy(tally, scorer=score).install(router)
    tally.shadow("gpt-4o-mini", sample=0.5, task_types=["qa-simple"])

    async def go():
        for _ in range(40):
            await router.acompletion(model="auto", messages=MSGS, metadata=dict(TASK))
        await router.acompletion(model="auto", messages=MSGS,
                                 metadata={"tally": {"task_type": "summarisation"}})
        return await tally.aflush(10.0)

    try:
        assert asyncio.run(go())
        shadows = rows_of(tally, "gpt-4o-mini")
        assert 10 <= len(shadows) <= 30  # about half of 40, seeded
        assert {r["task_type"] for r in shadows} == {"qa-simple"}
        assert all(r["quality"] == 0.9 for r in shadows)
    finally:
        strategy.close()
