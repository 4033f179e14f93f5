from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally_core import Tally
from tally_core._state import EMPTY_VIEW, LearnParams, Update, apply_updates, arm_view
from tally_core.policy import (
    Candidate,
    CostOptimised,
    FloorBandit,
    Policy,
    StaticThreshold,
    prob_clears,
)
from tally_core.policy import bandit as bandit_mod


def view_from(qualities: list[float]):
    state = {"clock": 0.0, "cells": {}}
    apply_updates(
        state,
        [Update("o", "t", "*", "m", q, False, 100.0, 50, 0.0) for q in qualities],
        LearnParams(),
    )
    return arm_view(state["cells"]["*"]["m"], state["clock"], LearnParams())


def draws(seed: int):
    rng = random.Random(seed)
    return rng.random, lambda: rng.gauss(0.0, 1.0)


def test_every_policy_builds_from_its_unit_test_params() -> None:
    for cls in Policy.__subclasses__():
        assert isinstance(cls(**cls._unit_test_params()), Policy)


def test_calibration_goes_cheapest_first_and_counts_pending() -> None:
    p = FloorBandit()
    plan = p.plan(
        [Candidate("big", 0.01, EMPTY_VIEW), Candidate("cheap", 0.001, EMPTY_VIEW)], 0.8, "big"
    )
    u, z = draws(0)
    assert p.pick(plan, u, z, {}).model == "cheap"
    assert p.pick(plan, u, z, {}).phase == "calibrate"
    # Five routes to "cheap" are in flight: calibrate the next one.
    assert p.pick(plan, u, z, {"cheap": 5}).model == "big"


def test_exploit_is_the_cheapest_model_that_clears() -> None:
    good = view_from([0.95] * 40)
    bad = view_from([0.5] * 40)
    p = FloorBandit(explore=0.0)
    cands = [
        Candidate("cheap-bad", 0.001, bad),
        Candidate("mid-good", 0.004, good),
        Candidate("big-good", 0.02, good),
    ]
    plan = p.plan(cands, 0.8, "big-good")
    u, z = draws(1)
    choice = p.pick(plan, u, z, {})
    assert (choice.model, choice.phase) == ("mid-good", "exploit")
    assert choice.confidence > 0.99
    assert [d.model for d in plan.dropped] == ["cheap-bad"]
    assert "below the floor (0.80)" in plan.dropped[0].reason


def test_fallback_when_nothing_clears() -> None:
    bad = view_from([0.6] * 30)
    p = FloorBandit()
    plan = p.plan([Candidate("a", 0.001, bad), Candidate("b", 0.01, bad)], 0.9, "b")
    u, z = draws(2)
    picks = {p.pick(plan, u, z, {}).phase for _ in range(200)}
    assert picks == {"fallback"}


def test_parity_without_a_floor() -> None:
    p = FloorBandit(explore=0.0)
    same = view_from([0.9] * 200)
    best = view_from([0.905] * 200)
    worse = view_from([0.7] * 200)
    plan = p.plan(
        [
            Candidate("cheap", 0.001, same),
            Candidate("mid", 0.002, worse),
            Candidate("big", 0.02, best),
        ],
        None,
        "big",
    )
    assert plan.floor == pytest.approx(best.mean - 0.02)
    u, z = draws(3)
    assert p.pick(plan, u, z, {}).model == "cheap"
    assert "mid" in {d.model for d in plan.dropped}


def test_time_sensitive_pays_for_speed_within_a_bound() -> None:
    def timed(lat: float):
        state = {"clock": 0.0, "cells": {}}
        apply_updates(
            state, [Update("o", "t", "*", "m", 0.95, False, lat, 10, 0.0)] * 40, LearnParams()
        )
        return arm_view(state["cells"]["*"]["m"], state["clock"], LearnParams())

    p = FloorBandit(explore=0.0)
    cands = [
        Candidate("cheap-slow", 0.001, timed(3000)),
        Candidate("fast", 0.003, timed(300)),
        Candidate("faster-but-dear", 0.1, timed(100)),
    ]
    u, z = draws(4)
    assert p.pick(p.plan(cands, 0.8, "fast"), u, z, {}).model == "cheap-slow"
    plan = p.plan(cands, 0.8, "fast", time_sensitive=True)
    assert p.pick(plan, u, z, {}).model == "fast"  # 3x the cost is within the 4x bound


def test_exploration_is_bounded_and_only_to_cheaper_uncertain_models() -> None:
    p = FloorBandit(explore=0.02)
    certain = view_from([0.95] * 60)
    unsure = view_from([0.85, 0.8, 0.75, 0.9, 0.8, 0.7, 0.85])
    cands = [
        Candidate("cheap", 0.001, unsure),
        Candidate("mid", 0.004, certain),
        Candidate("big", 0.02, unsure),
    ]
    plan = p.plan(cands, 0.8, "big")
    assert [e[0] for e in plan.explore] == ["cheap"]
    u, z = draws(5)
    counts: dict[str, int] = {}
    for _ in range(20_000):
        c = p.pick(plan, u, z, {})
        counts[c.model] = counts.get(c.model, 0) + 1
    assert "big" not in counts
    assert 0 < counts["cheap"] / 20_000 <= p.max_explore


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="confidence"):
        FloorBandit(confidence=1.5)
    with pytest.raises(ValueError, match="explore"):
        FloorBandit(explore=-0.1)


@settings(max_examples=200, deadline=None)
@given(
    means=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
    ns=st.lists(st.integers(0, 120), min_size=6, max_size=6),
    floor=st.floats(0.3, 0.95),
    seed=st.integers(0, 10_000),
    pending=st.integers(0, 10),
)
@pytest.mark.parametrize("policy_cls", [FloorBandit, CostOptimised, StaticThreshold])
def test_floor_is_never_violated_by_a_model_with_evidence_of_failing(
    policy_cls: type[Policy],
    means: list[float],
    ns: list[int],
    floor: float,
    seed: int,
    pending: int,
) -> None:
    rng = random.Random(seed)
    cands = []
    for i, m in enumerate(means):
        qs = [1.0 if rng.random() < m else 0.0 for _ in range(ns[i])]
        cands.append(Candidate(f"m{i}", 0.001 * (i + 1), view_from(qs) if qs else EMPTY_VIEW))
    fallback = cands[-1].name
    p: Any = policy_cls(**policy_cls._unit_test_params())
    plan = p.plan(cands, floor, fallback)
    failing = {
        c.name
        for c in cands
        if c.view.n >= p.min_fail_obs and prob_clears(c.view, floor) < p.fail_below
    }
    u, z = draws(seed)
    for _ in range(300):
        c = p.pick(plan, u, z, {n.name: pending for n in cands})
        if c.phase != "fallback":
            assert c.model not in failing, (c, failing)
            if c.phase == "exploit" and isinstance(p, FloorBandit):
                assert prob_clears(next(x.view for x in cands if x.name == c.model), floor) >= (
                    p.confidence
                )


def test_module_docstring_example_runs() -> None:
    assert bandit_mod.FloorBandit.__doc__


def test_cost_optimised_trusts_a_mean_just_above_the_floor() -> None:
    thin = view_from([0.9, 0.8, 0.82] * 4)  # mean 0.84 over 12: likely, not certain
    cands = [Candidate("cheap", 0.001, thin), Candidate("big", 0.02, view_from([0.97] * 40))]
    u, z = draws(3)
    fb, co = FloorBandit(explore=0.0), CostOptimised()
    assert fb.plan(cands, 0.8, "big").exploit == "big"  # FloorBandit wants more evidence
    choice = co.pick(co.plan(cands, 0.8, "big"), u, z, {})
    assert (choice.model, choice.phase) == ("cheap", "exploit")
    assert 0.5 <= choice.confidence < 0.9
    # Clearly below: dropped, like FloorBandit does.
    low = [Candidate("cheap", 0.001, view_from([0.4] * 10)), cands[1]]
    assert co.pick(co.plan(low, 0.8, "big"), u, z, {}).model == "big"


def test_static_threshold_tiers_by_floor_and_skips_failing_models() -> None:
    bad = view_from([0.2] * 10)
    cands = [
        Candidate("small", 0.001, EMPTY_VIEW),
        Candidate("mid", 0.004, bad),
        Candidate("mid2", 0.006, EMPTY_VIEW),
        Candidate("large", 0.02, EMPTY_VIEW),
    ]
    p = StaticThreshold(cheap_below=0.6, premium_from=0.9)
    u, z = draws(4)
    picks = {f: p.pick(p.plan(cands, f, "large"), u, z, {}).model for f in (0.5, 0.7, 0.95)}
    # 0.7 is the middle tier ("mid2", median by price); 0.5 the cheapest,
    # which has no evidence against it.
    assert picks == {0.5: "small", 0.7: "mid2", 0.95: "large"}
    plan = p.plan(cands[:2] + cands[3:], 0.7, "large")  # the median is "mid": failing
    assert plan.exploit == "large" and [d.model for d in plan.dropped] == ["mid"]
    with pytest.raises(Exception, match="premium_from"):
        StaticThreshold(cheap_below=0.8, premium_from=0.5)


def test_tally_runs_with_another_policy() -> None:
    pool = ["gpt-4o-mini", "gpt-4o"]
    with Tally(
        pool,
        fallback="gpt-4o",
        store=":memory:",
        seed=1,
        background=False,
        policy=StaticThreshold(),
    ) as t:
        assert t.route(task_type="classification", quality_floor=0.5).model == "gpt-4o-mini"
        assert t.route(task_type="reasoning", quality_floor=0.9).model == "gpt-4o"
    with Tally(
        pool,
        fallback="gpt-4o",
        store=":memory:",
        seed=1,
        background=False,
        policy=CostOptimised(min_obs=3),
    ) as t:
        for _ in range(30):
            d = t.route(task_type="extraction", quality_floor=0.8)
            t.telemetry(d, quality=0.9 if d.model == "gpt-4o-mini" else 0.95)
        last = [t.route(task_type="extraction", quality_floor=0.8) for _ in range(20)]
        assert {(d.model, d.phase) for d in last} == {("gpt-4o-mini", "exploit")}
