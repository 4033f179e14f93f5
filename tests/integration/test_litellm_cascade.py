"""tally_litellm.cascade through a real litellm.Router (mock responses): every tier goes
through TallyStrategy and the callback; check results teach Tally where to start."""

from __future__ import annotations

import asyncio

import litellm
import pytest

from tally_core import InvalidFieldError, Tally
from tally_core.cascade import Cascade, JsonValid, Matches, NonEmpty, NoRefusal
from tally_litellm import TallyStrategy, acascade, cascade, judge
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    POOL,
    dep,
    litellm_callbacks_restored,
)

GOOD = '{"city": "Paris"}'


def router_with(mini: str, haiku: str = GOOD, top: str = GOOD) -> litellm.Router:
    return litellm.Router(num_retries=0, model_list=[
        dep("gpt-4o-mini", "mini", reply=mini),
        dep("claude-haiku-4-5", "haiku", reply=haiku),
        dep("openai/gpt-4o", "4o", reply=top),
    ])


@pytest.fixture
def tally():
    t = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=9)
    yield t
    t.close()


@pytest.mark.parametrize(
    ("check", "bad"),
    [(NonEmpty(min_chars=4), "ok"), (NoRefusal(), "I'm sorry, but I can't help with that."),
     (JsonValid(), "Paris."), (Matches(r'"city"'), '{"town": "Paris"}')],
    ids=["non-empty", "no-refusal", "json", "matches"],
)
def test_each_check_escalates_a_bad_answer_to_the_next_tier(tally, check, bad):
    router = router_with(mini=bad)
    strategy = TallyStrategy(tally).install(router)
    try:
        r = cascade(router, checks=[check], model="auto", messages=MSGS,
                    metadata={"tally": {"task_type": "extraction"}})
        assert [(a.model, a.passed) for a in r.attempts] == [
            ("gpt-4o-mini", False), ("claude-haiku-4-5", True)]
        assert (r.model, r.tier) == ("claude-haiku-4-5", 1)
        assert r.response.choices[0].message.content == GOOD
    finally:
        strategy.close()


def test_every_attempt_is_in_the_ledger_marked_and_costed(tally):
    router = router_with(mini=" ", haiku=" ", top=GOOD)  # blank answers (not an empty mock)
    strategy = TallyStrategy(tally).install(router)
    try:
        r = cascade(router, checks=[NonEmpty()], model="auto", messages=MSGS,
                    metadata={"tally": "extraction"})
        assert tally.flush()
        assert [a.model for a in r.attempts] == POOL and r.tier == 2
        rows = [row for row in tally.ledger.rows() if f"cascade:{r.cascade_id}" in row["tags"]]
        assert sorted(row["model"] for row in rows) == sorted(POOL)
        assert sorted(row["quality"] for row in rows) == [0.0, 0.0, 1.0]
        assert r.cost_usd == pytest.approx(sum(row["cost_usd"] for row in rows))
        assert r.cost_usd == pytest.approx(sum(a.cost_usd for a in r.attempts)) and r.cost_usd > 0
    finally:
        strategy.close()


def test_the_cascade_learns_to_start_above_a_tier_that_keeps_failing(tally):
    router = router_with(mini=GOOD, haiku="no json here", top=GOOD)
    strategy = TallyStrategy(tally).install(router)
    plan = Cascade(checks=[JsonValid()], tiers=["claude-haiku-4-5", "gpt-4o"], explore=0.0)
    try:
        entries = []
        for _ in range(12):
            r = cascade(router, cascade=plan, model="auto", messages=MSGS,
                        metadata={"tally": "extraction"})
            entries.append(r.attempts[0].tier)
            assert r.model == "gpt-4o"
            assert tally.flush()
        assert entries[0] == 0 and entries[-1] == 1
        first_up = entries.index(1)
        assert all(e == 1 for e in entries[first_up:])  # once learned, it stays learned
    finally:
        strategy.close()


def test_acascade_and_a_judge_whose_cost_counts(tally):
    router = router_with(mini="Lyon", haiku="Paris")
    strategy = TallyStrategy(tally).install(router)
    grades = iter(["2", "9"])

    def mock_judge(**kw):
        return litellm.completion(model="gpt-4o-mini", messages=kw["messages"],
                                  mock_response=next(grades))

    check = judge("gpt-4o-mini", threshold=0.7, mock_response="placeholder")
    check = type(check)(ask=lambda p: (mock_judge(messages=[{"role": "user", "content": p}])
                                       .choices[0].message.content, 0.0002),
                        threshold=0.7)

    async def go():
        r = await acascade(router, checks=[check], model="auto", messages=MSGS,
                           metadata={"tally": "qa-simple"})
        await tally.aflush()
        return r

    try:
        r = asyncio.run(go())
        assert [(a.model, a.passed) for a in r.attempts] == [
            ("gpt-4o-mini", False), ("claude-haiku-4-5", True)]
        assert r.cost_usd == pytest.approx(
            sum(a.cost_usd for a in r.attempts)) and r.cost_usd > 2 * 0.0002
    finally:
        strategy.close()


def test_judge_asks_the_model_through_litellm_with_its_own_cost():
    check = judge("gpt-4o-mini", threshold=0.7, mock_response="8")
    verdict = check({"messages": MSGS}, "Paris")
    assert verdict.score == 1.0 and verdict.cost_usd > 0


def test_misuse_names_the_field(tally):
    router = router_with(mini=GOOD)
    with pytest.raises(InvalidFieldError, match="router"):
        cascade(router, checks=[NonEmpty()], model="auto", messages=MSGS)
    strategy = TallyStrategy(tally).install(router)
    try:
        with pytest.raises(InvalidFieldError, match="stream"):
            cascade(router, checks=[NonEmpty()], model="auto", messages=MSGS, stream=True)
        with pytest.raises(InvalidFieldError, match="checks"):
            cascade(router, model="auto", messages=MSGS)
    finally:
        strategy.close()
