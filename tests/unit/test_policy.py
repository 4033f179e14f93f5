"""Policies: the floor guarantee every policy inherits from ``Policy``, and
FloorBandit's rules (realised cost, Beta posterior, hysteresis, the fallback
rule, the risk budget and the resolution cap) with real numbers."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally_core import Tally
from tally_core.catalog import ModelSpec
from tally_core.errors import InvalidFieldError
from tally_core.learning import (
    EMPTY_MEMORY,
    EMPTY_VIEW,
    LearnParams,
    TaskMemory,
    Update,
    apply_updates,
    arm_view,
    new_task_state,
    task_memory,
)
from tally_core.policy import (
    Candidate,
    CostOptimised,
    FloorBandit,
    Policy,
    StaticThreshold,
    beta_sf,
    prob_clears,
)


def view_from(qualities: list[float], **update: Any):
    if not qualities:
        return EMPTY_VIEW
    state = new_task_state()
    apply_updates(
        state,
        [Update("o", "t", "*", "m", q, False, 100.0, 50, 0.001, **update) for q in qualities],
        LearnParams(),
    )
    return arm_view(state["cells"]["*"]["m"], state["clock"], LearnParams())


def bernoulli(p: float, n: int, seed: int = 0) -> list[float]:
    """n 0/1 outcomes with exactly round(p * n) successes, in a seeded order."""
    k = round(p * n)
    out = [1.0] * k + [0.0] * (n - k)
    random.Random(seed).shuffle(out)
    return out


def draws(seed: int):
    rng = random.Random(seed)
    return rng.random, lambda: rng.gauss(0.0, 1.0)


def every_policy() -> list[type[Policy]]:
    out, todo = [], list(Policy.__subclasses__())
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_every_policy_builds_from_its_unit_test_params() -> None:
    classes = every_policy()
    assert {FloorBandit, CostOptimised, StaticThreshold} <= set(classes)
    for cls in classes:
        assert isinstance(cls(**cls._unit_test_params()), Policy)


# -- the posterior ----------------------------------------------------------------


def test_beta_posterior_for_binary_outcomes() -> None:
    ten_of_ten = view_from([1.0] * 10)
    assert ten_of_ten.binary
    # Beta(11, 1): P(q >= 0.9) = 1 - 0.9**11, where a plug-in normal says 0.97.
    assert prob_clears(ten_of_ten, 0.9) == pytest.approx(1 - 0.9**11, abs=1e-9)
    assert beta_sf(0.3, 1, 5) == pytest.approx(0.7**5, abs=1e-12)
    assert beta_sf(0.8, 7, 1) == pytest.approx(1 - 0.8**7, abs=1e-12)
    # 0 of 5: unlikely, but not excluded for good (too few outcomes).
    zero_of_five = view_from([0.0] * 5)
    assert prob_clears(zero_of_five, 0.5) == pytest.approx(0.5**6, abs=1e-12)
    p = FloorBandit()
    plan = p.plan([Candidate("m", 0.001, zero_of_five), Candidate("f", 0.01, EMPTY_VIEW)], 0.5, "f")
    assert "m" in plan.allowed and not plan.dropped


def test_graded_outcomes_get_a_variance_floored_normal() -> None:
    same = view_from([0.9] * 8)
    assert not same.binary
    # Eight identical grades: the sample variance is 0, the floor keeps doubt.
    assert 0.5 < prob_clears(same, 0.85) < 0.99


def test_evidence_is_kept_until_the_drift_detector_fires() -> None:
    state = new_task_state()
    params = LearnParams()
    good = [Update("o", "t", "*", "m", q, False, None, None, 0.0) for q in bernoulli(0.9, 400)]
    apply_updates(state, good, params)
    v = arm_view(state["cells"]["*"]["m"], state["clock"], params)
    assert v.n == 400 and v.resets == 0  # no discount on a clock
    bad = [Update("o", "t", "*", "m", q, False, None, None, 0.0) for q in bernoulli(0.3, 40)]
    apply_updates(state, bad, params)
    v = arm_view(state["cells"]["*"]["m"], state["clock"], params)
    assert v.resets >= 1 and v.n < 60 and v.mean < 0.6


# -- the guarantee, for every policy --------------------------------------------

views = st.lists(st.floats(0.0, 1.0), min_size=0, max_size=40).map(
    lambda qs: view_from([round(q) for q in qs])
)


@settings(max_examples=60, deadline=None)
@given(
    pool=st.lists(st.tuples(st.floats(1e-5, 1e-2), views), min_size=1, max_size=5),
    floor=st.one_of(st.none(), st.floats(0.05, 0.95)),
    seed=st.integers(0, 1000),
    which=st.integers(0, 10),
    leader=st.integers(0, 5),
)
def test_no_policy_routes_to_a_model_shown_below_the_floor(
    pool: list[tuple[float, Any]], floor: float | None, seed: int, which: int, leader: int
) -> None:
    classes = every_policy()
    policy = classes[which % len(classes)](**classes[which % len(classes)]._unit_test_params())
    cands = [Candidate(f"m{i}", cost, v) for i, (cost, v) in enumerate(pool)]
    fallback = cands[-1].name
    memory = TaskMemory(clock=float(seed), learn=float(seed % 300), leader=(("0.5", f"m{leader}"),))
    plan = policy.plan(cands, floor, fallback, memory=memory)
    u, z = draws(seed)
    for _ in range(30):
        choice = policy.pick(plan, u, z, {})
        if plan.floor is None:
            continue
        c = next((c for c in cands if c.name == choice.model), None)
        assert c is not None
        shown_below = c.view.n >= policy.min_fail_obs and prob_clears(c.view, plan.floor) <= (
            policy.fail_below
        )
        # Only the safe arm may be routed to when shown below: nothing else is.
        assert not shown_below or choice.model == plan.fallback
        assert choice.model in plan.allowed


def test_the_base_refuses_a_choice_outside_the_plan() -> None:
    class Rogue(FloorBandit):
        def _pick(self, plan, uniform, normal, pending):  # type: ignore[no-untyped-def]
            from tally_core.policy import Choice

            return Choice("bad", "exploit", 1.0)

    bad = view_from(bernoulli(0.1, 40))
    good = view_from(bernoulli(0.97, 200))
    p = Rogue()
    plan = p.plan([Candidate("bad", 0.001, bad), Candidate("big", 0.01, good)], 0.8, "big")
    assert "bad" not in plan.allowed and [d.model for d in plan.dropped] == ["bad"]
    assert p.pick(plan, *draws(0), {}).model == "big"


# -- FloorBandit's rules ------------------------------------------------------------


def test_the_fallback_is_the_safe_arm_and_dearer_models_are_never_chosen() -> None:
    sure = view_from(bernoulli(0.95, 300))
    p = FloorBandit()
    cands = [
        Candidate("cheap", 0.001, view_from(bernoulli(0.3, 20))),
        Candidate("fb", 0.010, sure),
        Candidate("dear", 0.020, sure),
    ]
    plan = p.plan(cands, 0.8, "fb")
    assert plan.exploit is None and plan.fallback == "fb"
    picks = {p.pick(plan, *draws(s), {}).model for s in range(200)}
    assert "dear" not in picks


def test_a_model_saving_under_ten_percent_is_not_a_candidate() -> None:
    sure = view_from(bernoulli(0.97, 300))
    p = FloorBandit()
    plan = p.plan([Candidate("almost", 0.0095, sure), Candidate("fb", 0.010, sure)], 0.8, "fb")
    assert plan.exploit is None and plan.explore == []
    plan = p.plan([Candidate("cheaper", 0.0089, sure), Candidate("fb", 0.010, sure)], 0.8, "fb")
    assert plan.exploit == "cheaper"


def test_cost_weighted_leader_rule() -> None:
    p = FloorBandit(violation_price=6)
    # P(clears 0.8) of about 0.88 after 200 outcomes at 0.835.
    v = view_from(bernoulli(0.835, 200))
    conf = prob_clears(v, 0.8)
    assert 0.85 < conf < 0.95
    fb = view_from(bernoulli(0.97, 300))
    big_saving = p.plan([Candidate("k", 0.001, v), Candidate("fb", 0.010, fb)], 0.8, "fb")
    small_saving = p.plan([Candidate("k", 0.006, v), Candidate("fb", 0.010, fb)], 0.8, "fb")
    assert big_saving.exploit == "k"  # saves 90%: worth it at P > 0.85
    assert small_saving.exploit is None  # saves 40%: needs P >= 0.933
    assert p.entry_bar(0.4) == pytest.approx(1 - 0.4 / 6)
    # The default price of a violation is 3 safe-arm calls: 90% saved is
    # used at P >= 0.7, 40% at 0.867, so the 40% model above is used too.
    d = FloorBandit()
    assert d.entry_bar(0.9) == pytest.approx(0.7) and d.entry_bar(0.4) == pytest.approx(1 - 0.4 / 3)
    assert d.plan([Candidate("k", 0.006, v), Candidate("fb", 0.010, fb)], 0.8, "fb").exploit == "k"


def test_hysteresis_enter_high_stay_while_above_the_lower_bar() -> None:
    p = FloorBandit(violation_price=6)
    fb = view_from(bernoulli(0.97, 300))
    # Saves 40%: enters at P >= 0.933, stays while P >= 0.933 - (enter - stay).
    dip = view_from(bernoulli(0.825, 300))
    conf = prob_clears(dip, 0.8)
    assert 0.8 < conf < 0.93
    cands = [Candidate("k", 0.006, dip), Candidate("fb", 0.010, fb)]
    new = p.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY)
    kept = p.plan(cands, 0.8, "fb", memory=TaskMemory(clock=600.0, leader=(("0.8", "k"),)))
    assert new.exploit is None and kept.exploit == "k"
    low = view_from(bernoulli(0.79, 300))
    gone = p.plan(
        [Candidate("k", 0.006, low), Candidate("fb", 0.010, fb)],
        0.8,
        "fb",
        memory=TaskMemory(clock=600.0, leader=(("0.8", "k"),)),
    )
    assert gone.exploit is None


def test_the_leader_is_remembered_with_the_task_state_per_floor() -> None:
    state = new_task_state()
    ups = [
        Update("o", "t", "*", "k", 1.0, False, None, None, 0.0, phase="exploit", floor="0.8"),
        Update("o", "t", "*", "j", 0.0, False, None, None, 0.0, phase="explore", floor="0.8"),
        Update("o", "t", "*", "f", 1.0, False, None, None, 0.0, phase="fallback", floor="0.9"),
    ]
    apply_updates(state, ups, LearnParams())
    mem = task_memory(state)
    assert mem.leader_for(0.8) == "k" and mem.leader_for(0.9) is None
    assert mem.learn == 1.0 and mem.clock == 3.0
    assert arm_view(state["cells"]["*"]["j"], 3.0, LearnParams()).risky_calls == 1.0
    apply_updates(
        state,
        [Update("o", "t", "*", "f", 1.0, False, None, None, 0.0, phase="fallback", floor="0.8")],
        LearnParams(),
    )
    assert task_memory(state).leader_for(0.8) is None


def test_item3_fallback_below_the_floor_is_replaced_by_a_model_shown_above() -> None:
    p = FloorBandit()
    fb = view_from(bernoulli(0.55, 200))  # the premium model is poor on this task
    other = view_from(bernoulli(0.80, 200))  # a dearer-or-equal model that clears 0.65
    cands = [Candidate("cheap", 0.001, EMPTY_VIEW), Candidate("fb", 0.010, fb)]
    plan = p.plan([*cands, Candidate("other", 0.010, other)], 0.65, "fb")
    assert plan.fallback == "other" and "fb" not in plan.allowed
    assert any("fallback fb is below the floor" in n for n in plan.notes)
    # Without a model shown above the floor, the fallback stays, and says why.
    alone = p.plan(cands, 0.65, "fb")
    assert alone.fallback == "fb"
    assert any("no other model is shown above it" in n for n in alone.notes)


def test_item3_through_tally_and_explain() -> None:
    models = [
        ModelSpec(name="cheap", input_cost_per_mtok=0.1, output_cost_per_mtok=0.1),
        ModelSpec(name="mid", input_cost_per_mtok=1.0, output_cost_per_mtok=1.0),
        ModelSpec(name="premium", input_cost_per_mtok=1.0, output_cost_per_mtok=1.0),
    ]
    truth = {"cheap": 0.2, "mid": 0.9, "premium": 0.55}
    rng = random.Random(3)
    with Tally(models, fallback="premium", store=":memory:", seed=3, background=False) as t:
        for _ in range(400):
            d = t.route(task_type="extraction", quality_floor=0.7)
            q = 1.0 if rng.random() < truth[d.model] else 0.0
            t.telemetry(d, quality=q, input_tokens=100, output_tokens=100)
        d = t.route(task_type="extraction", quality_floor=0.7)
    assert d.model == "mid"
    assert "fallback premium is below the floor" in d.explain()


def test_realised_cost_ranks_models_not_a_nominal_payload() -> None:
    # "wordy" is cheaper per token but writes ten times the tokens: per real
    # call it costs more than "terse", so it must rank dearer.
    models = [
        ModelSpec(name="wordy", input_cost_per_mtok=1.0, output_cost_per_mtok=1.0),
        ModelSpec(name="terse", input_cost_per_mtok=2.0, output_cost_per_mtok=2.0),
        ModelSpec(name="fb", input_cost_per_mtok=20.0, output_cost_per_mtok=20.0),
    ]
    out = {"wordy": 2000, "terse": 200, "fb": 300}
    with Tally(models, fallback="fb", store=":memory:", seed=1, background=False) as t:
        for m in ("wordy", "terse", "fb"):
            for _ in range(20):
                cost = t.catalog[m].estimate_cost_usd(80, out[m])
                t.telemetry(
                    model=m,
                    task_type="qa",
                    quality=1.0,
                    input_tokens=80,
                    output_tokens=out[m],
                    cost_usd=cost,
                )
        t.flush()
        est = {s["model"]: s["est_cost_usd"] for s in t.stats("qa", quality_floor=0.5)}
    realised = {m: (80 + out[m]) * {"wordy": 1.0, "terse": 2.0, "fb": 20.0}[m] / 1e6 for m in out}
    assert est["terse"] < est["wordy"] < est["fb"]
    # Shrunk toward the catalog estimate (3 pseudo-calls), which prices the
    # task's typical tokens: within a few percent of the realised cost.
    for m in out:
        assert est[m] == pytest.approx(realised[m], rel=0.15)


def test_risk_budget_stops_learning_when_spent() -> None:
    p = FloorBandit(max_violation_rate=0.01, onboarding_calls=1000)
    fb = view_from(bernoulli(0.97, 300))
    # 30 learning calls on a model that now looks below the floor: 30 * ~0.7
    # expected violations > 0.01 * (1000 + 300) = 13 allowed.
    doubtful = view_from(bernoulli(0.72, 30), phase="explore")
    hopeful = EMPTY_VIEW
    cands = [
        Candidate("new", 0.0005, hopeful),
        Candidate("tried", 0.001, doubtful),
        Candidate("fb", 0.010, fb),
    ]
    spent = p.plan(cands, 0.8, "fb", memory=TaskMemory(clock=300.0))
    assert spent.explore == [] and any("risk budget spent" in n for n in spent.notes)
    roomy = FloorBandit(max_violation_rate=0.05).plan(
        cands, 0.8, "fb", memory=TaskMemory(clock=300.0)
    )
    assert "new" in roomy.explore


def test_cautious_prices_learning_against_an_unseen_fallback_as_clearing() -> None:
    """At a 0.78 floor an unseen fallback's uniform prior gives P(clears) =
    0.22, so 80 learning calls on a model that now looks below the floor
    read as almost no risk; cautious mode prices them against a fallback
    that clears, and learning waits."""
    fb = EMPTY_VIEW  # the allowance sent every call to learning so far
    tried = view_from(bernoulli(0.72, 80), phase="explore")  # P(clears 0.78) ~ 0.1
    cands = [Candidate("tried", 0.001, tried), Candidate("new", 0.0005, EMPTY_VIEW),
             Candidate("fb", 0.010, fb)]  # fmt: skip
    mem = TaskMemory(clock=80.0, learn=80.0)
    assert prob_clears(fb, 0.78) < 0.25 and prob_clears(tried, 0.78) < 0.15
    loose = FloorBandit().plan(cands, 0.78, "fb", memory=mem)  # 80 x 0.11 of 60.8 allowed
    assert loose.explore and not any("risk budget spent" in n for n in loose.notes)
    strict = FloorBandit(cautious=True).plan(cands, 0.78, "fb", memory=mem)  # 80 x 0.89
    assert strict.explore == [] and any("risk budget spent" in n for n in strict.notes)


def test_the_allowance_follows_the_stated_rate() -> None:
    """The learning allowance is 40,000 calls x the stated rate (400 at 1%),
    so a lower rate learns on fewer calls: a task type 300 calls in, with
    nothing proven, learns on every call at 1% and only on the resolution
    share at 0.5%. An explicit allowance wins."""
    assert FloorBandit().allowance == 400
    assert FloorBandit(max_violation_rate=0.005).allowance == 200
    assert FloorBandit(max_violation_rate=0.02).allowance == 800
    assert FloorBandit(max_violation_rate=0.005, allowance=50).allowance == 50
    fb = view_from(bernoulli(0.97, 50))
    cands = [Candidate("new", 0.001, EMPTY_VIEW), Candidate("fb", 0.010, fb)]
    mem = TaskMemory(clock=300.0, learn=60.0)
    at_1 = FloorBandit().plan(cands, 0.8, "fb", memory=mem)
    at_half = FloorBandit(max_violation_rate=0.005).plan(cands, 0.8, "fb", memory=mem)
    assert at_1.data.share == 1.0
    assert at_half.data.share == FloorBandit().resolve_share


def test_cautious_allowance_counts_learning_calls() -> None:
    """A task type 1,000 calls in with only 100 learning calls is past the
    default 400-call allowance (resolution share), but still inside it in
    cautious mode (every call may learn)."""
    fb = view_from(bernoulli(0.97, 900))
    cands = [Candidate("new", 0.001, EMPTY_VIEW), Candidate("fb", 0.010, fb)]
    mem = TaskMemory(clock=1000.0, learn=100.0)
    default = FloorBandit(max_violation_rate=0.05, allowance=400).plan(
        cands, 0.8, "fb", memory=mem
    )
    cautious = FloorBandit(max_violation_rate=0.05, allowance=400, cautious=True).plan(
        cands, 0.8, "fb", memory=mem
    )
    assert default.data.share == FloorBandit().resolve_share
    assert cautious.data.share == 1.0


def test_learning_aims_at_the_widest_margin_weighed_by_saving() -> None:
    """In the allowance, a cheaper rival a little below the floor takes a
    minority of the learning calls, a dearer model well above it the rest;
    the weight on saving moves calls toward the cheaper model."""
    fb = view_from(bernoulli(0.97, 300))
    rival = view_from(bernoulli(0.76, 25))  # cheapest, 4 points below
    good = view_from(bernoulli(0.88, 25))  # ten times its price, 8 points above
    cands = [Candidate("rival", 0.0005, rival), Candidate("good", 0.005, good),
             Candidate("fb", 0.010, fb)]  # fmt: skip

    def shares(policy: FloorBandit) -> tuple[float, float]:
        plan = policy.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY)
        assert plan.exploit is None and set(plan.explore) == {"rival", "good"}
        u, z = draws(3)
        picks = [policy.pick(plan, u, z, {}).model for _ in range(4000)]
        return picks.count("rival") / len(picks), picks.count("fb") / len(picks)

    default, default_fb = shares(FloorBandit(learn_order="margin"))
    margin_only, _ = shares(FloorBandit(learn_order="margin", saving_weight=0.0))
    assert default_fb == 0.0  # the allowance learns on every call
    assert margin_only < 0.25 and margin_only + 0.1 < default < 0.5, (margin_only, default)
    # In cautious mode a learning call keeps its pick with P(clears) ** 0.5: the
    # rival (P about 0.2) loses more than half of its calls, the model above
    # the floor (P about 0.8) about a tenth, and those stay on the safe arm.
    thinned, thinned_fb = shares(FloorBandit(learn_order="margin", cautious=True))
    p_rival, p_good = prob_clears(rival, 0.8), prob_clears(good, 0.8)
    assert p_rival < 0.3 < 0.75 < p_good
    expect_fb = default * (1 - p_rival**0.5) + (1 - default) * (1 - p_good**0.5)
    assert abs(thinned_fb - expect_fb) < 0.03, (thinned_fb, expect_fb)
    assert abs(thinned - default * p_rival**0.5) < 0.03, (thinned, default, p_rival)


def test_learning_goes_to_the_cheapest_price_tier_first() -> None:
    """Before a model is exploited, learning calls go to the cheapest price
    tier (models within ``min_saving`` of the cheapest one's cost), and to
    the next one only once the gate has dropped that tier on evidence."""
    fb = view_from(bernoulli(0.97, 300))
    promising = view_from(bernoulli(0.85, 12))
    cands = [Candidate("cheap", 0.0010, promising), Candidate("cheap2", 0.00105, EMPTY_VIEW),
             Candidate("dear", 0.0040, EMPTY_VIEW), Candidate("fb", 0.010, fb)]  # fmt: skip
    p = FloorBandit()
    plan = p.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY)
    assert plan.exploit is None and set(plan.explore) == {"cheap", "cheap2"}
    u, z = draws(4)
    picks = [p.pick(plan, u, z, {}).model for _ in range(2000)]
    assert picks.count("dear") == 0 and picks.count("fb") == 0  # the allowance learns every call
    assert min(picks.count("cheap"), picks.count("cheap2")) > 200, picks.count("cheap")
    # The widest-margin order learns every candidate.
    margin = FloorBandit(learn_order="margin").plan(cands, 0.8, "fb", memory=EMPTY_MEMORY)
    assert set(margin.explore) == {"cheap", "cheap2", "dear"}
    # Both cheap models shown unlikely to clear (P below the gate, on 12
    # outcomes each): the dearer tier is learned.
    poor = view_from(bernoulli(0.5, 12))
    assert prob_clears(poor, 0.8) < p.learn_gate
    cands = [Candidate("cheap", 0.0010, poor), Candidate("cheap2", 0.00105, poor),
             Candidate("dear", 0.0040, EMPTY_VIEW), Candidate("fb", 0.010, fb)]  # fmt: skip
    assert p.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY).explore == ["dear"]
    # A gate that needs 30 outcomes keeps them learnable on 12, not on 30.
    patient = FloorBandit(learn_gate_obs=30)
    assert set(patient.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY).explore) == {"cheap", "cheap2"}
    poor30 = view_from(bernoulli(0.6, 30))
    assert prob_clears(poor30, 0.8) < patient.learn_gate
    cands = [Candidate("cheap", 0.0010, poor30), Candidate("cheap2", 0.00105, poor30),
             Candidate("dear", 0.0040, EMPTY_VIEW), Candidate("fb", 0.010, fb)]  # fmt: skip
    assert patient.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY).explore == ["dear"]
    with pytest.raises(InvalidFieldError) as e:
        FloorBandit(learn_gate_obs=0)
    assert e.value.field == "learn_gate_obs"
    with pytest.raises(InvalidFieldError) as e:
        FloorBandit(learn_order="cheapest")
    assert e.value.field == "learn_order" and "cost, margin" in str(e.value)


def test_cost_order_never_learns_a_dearer_rival_when_the_cheapest_clears() -> None:
    """Generated 0/1 outcomes: the cheapest model clears a 0.8 floor by 5
    points, a dearer one sits 4 below it, a third far below. In cost order
    the rivals take no call after the warm-up; learning every candidate by
    margin sends some below the floor."""
    from tally_core.eval.replay import read_table, replay

    rng = random.Random(7)
    truth = {"cheap": 0.85, "rival": 0.76, "weak": 0.4, "premium": 0.95}
    price = {"cheap": 0.1, "rival": 0.3, "weak": 0.3, "premium": 2.0}
    lines = ["prompt_id,task_type,model,quality,input_tokens,output_tokens,cost_usd"]
    for i in range(1200):
        for m, q in truth.items():
            ok = 1 if rng.random() < q else 0
            lines.append(f"p{i},extraction,{m},{ok},100,300,{price[m] * 400 / 1e6:.9f}")
    table = read_table(lines, "csv")
    out: dict[str, list[tuple[float, float]]] = {"cost": [], "margin": []}
    for order in out:
        for seed in range(1, 5):
            r = replay(table, floor=0.8, seed=seed, calls=2400, shuffle=True, warmup=0,
                       routers=["tally"], best="premium",
                       tally_kwargs={"policy": FloorBandit(learn_order=order)})  # fmt: skip
            t = r["routers"]["tally"]
            out[order].append((t["oracle_savings_share"], t["violation_rate"]))
    assert all(v == 0.0 and share > 0.99 for share, v in out["cost"]), out["cost"]
    assert sum(v for _, v in out["margin"]) > 0.0, out["margin"]


def test_the_learning_gate_keeps_the_likeliest_arm_while_on_the_safe_arm() -> None:
    fb = view_from(bernoulli(0.97, 300))
    a = view_from(bernoulli(7 / 12, 12))  # P(clears 0.8) below the gate
    b = view_from(bernoulli(0.5, 12))
    p = FloorBandit()
    cands = [Candidate("a", 0.002, a), Candidate("b", 0.001, b), Candidate("fb", 0.010, fb)]
    assert max(prob_clears(a, 0.8), prob_clears(b, 0.8)) < p.learn_gate
    plan = p.plan(cands, 0.8, "fb", memory=EMPTY_MEMORY)
    assert plan.exploit is None and plan.explore == ["a"]  # not nothing, not the cheaper b


def test_resolution_is_capped() -> None:
    p = FloorBandit()
    fb = view_from(bernoulli(0.97, 3000))
    maybe = view_from(bernoulli(0.80, 60))  # P(clears 0.8) about 0.5: worth resolving
    cands = [Candidate("k", 0.001, maybe), Candidate("fb", 0.010, fb)]
    cap = p.resolve_cap(3000)
    assert cap == pytest.approx(200 + 0.02 * 3000)
    under = p.plan(cands, 0.8, "fb", memory=TaskMemory(clock=3000.0, learn=cap - 1))
    over = p.plan(cands, 0.8, "fb", memory=TaskMemory(clock=3000.0, learn=cap))
    assert under.explore == ["k"] and under.data.share == p.resolve_share
    # Past the cap only the small standing exploration share remains.
    assert over.data.share == p.explore_share < p.resolve_share
    u, z = draws(1)
    share = sum(p.pick(under, u, z, {}).model == "k" for _ in range(4000)) / 4000
    assert 0.05 < share < p.resolve_share + 0.02


def test_parity_calibrates_every_candidate_then_rechecks_the_reference() -> None:
    p = FloorBandit()
    a = view_from(bernoulli(0.9, 25))
    plan = p.plan([Candidate("a", 0.001, a), Candidate("b", 0.01, EMPTY_VIEW)], None, "b")
    assert plan.calibrate == [("b", 0, p.parity_min_obs)] and plan.floor is None
    assert p.pick(plan, *draws(0), {}).model == "b"
    b = view_from(bernoulli(0.8, 20))
    plan = p.plan([Candidate("a", 0.001, a), Candidate("b", 0.01, b)], None, "b")
    # The Beta mean of 22 of 25 successes, less the tolerance.
    assert plan.floor == pytest.approx((1 + 22) / 27 - p.parity_tolerance)
    # b's upper bound still tops a's mean: it gets more outcomes first.
    assert plan.calibrate == [("b", 20, 2 * p.parity_min_obs)]


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(InvalidFieldError) as e:
        FloorBandit(max_violation_rate=0.9)
    assert e.value.field == "max_violation_rate"
    with pytest.raises(InvalidFieldError) as e:
        FloorBandit(stay=0.99)
    assert e.value.field == "stay"
    with pytest.raises(InvalidFieldError) as e:
        Tally(["gpt-4o-mini", "gpt-4o"], store=":memory:", max_violation_rate=-1)
    assert e.value.field == "max_violation_rate"
    with pytest.raises(InvalidFieldError):
        StaticThreshold(cheap_below=0.8, premium_from=0.5)


def test_cost_optimised_trusts_a_mean_just_above_the_floor() -> None:
    just = view_from(bernoulli(0.9, 10))  # Beta mean 10/12, just above 0.8
    fb, co = FloorBandit(), CostOptimised()
    cands = [Candidate("k", 0.001, just), Candidate("f", 0.01, view_from([1.0] * 50))]
    assert co.plan(cands, 0.8, "f").exploit == "k"
    assert fb.plan(cands, 0.8, "f").exploit is None  # too little evidence to bet on


def test_static_threshold_tiers_by_floor_and_skips_failing_models() -> None:
    p = StaticThreshold(cheap_below=0.6, premium_from=0.9)
    fails = view_from([0.0] * 12)
    cands = [
        Candidate("s", 0.001, fails),
        Candidate("m", 0.005, EMPTY_VIEW),
        Candidate("l", 0.02, EMPTY_VIEW),
    ]
    assert p.plan(cands, 0.5, "l").exploit == "m"  # s is shown failing: next dearer
    assert p.plan(cands, 0.95, "l").exploit == "l"


def test_tally_holds_a_real_shaped_floor_over_seeded_streams() -> None:
    """A regression guard on a small real-shaped table (0/1 outcomes, the
    cheapest feasible model 6 points above the floor, a cheaper rival 6
    below, a premium fallback that writes more): share of the oracle's
    savings and violations with margin."""
    from tally_core.eval.replay import read_table, replay

    rng = random.Random(12)
    truth = {"rival": 0.74, "good": 0.86, "weak": 0.3, "premium": 0.93}
    price = {"rival": 0.1, "good": 0.2, "weak": 0.2, "premium": 2.0}
    lines = ["prompt_id,task_type,model,quality,input_tokens,output_tokens,cost_usd"]
    for i in range(1500):
        it = rng.randint(40, 160)
        for m, q in truth.items():
            out = 250 if m != "premium" else 600  # the premium model writes more
            ok = 1 if rng.random() < q else 0
            lines.append(f"p{i},extraction,{m},{ok},{it},{out},{price[m] * (it + out) / 1e6:.9f}")
    table = read_table(lines, "csv")
    shares, viols = [], []
    for seed in range(1, 4):
        r = replay(table, floor=0.8, seed=seed, calls=3000, shuffle=True, routers=["tally"])
        t = r["routers"]["tally"]
        shares.append(t["oracle_savings_share"])
        viols.append(t["violation_rate"])
    assert sum(shares) / 3 > 0.9, shares
    assert sum(viols) / 3 < 0.03, viols
    assert all(math.isfinite(s) for s in shares)
