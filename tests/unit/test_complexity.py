"""Complexity as a context cell of the bandit, and the article's complexity tiers."""

from __future__ import annotations

import random

import pytest

from tally_core import InvalidFieldError, StaticThreshold, Tally
from tally_core.eval.sim import TallyRouter, load_scenario, run_comparison, simulate
from tally_core.learning import EMPTY_VIEW, ArmView
from tally_core.policy import ComplexityThreshold
from tally_core.policy.base import Candidate

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
# A task type whose easy calls (70%) the cheap model serves and whose hard
# ones it fails half the time: on average it clears the floor (0.83 > 0.75),
# so a bandit that sees only the task type sends the hard calls there too.
TRUE = {
    "low": {"gpt-4o-mini": 0.97, "claude-haiku-4-5": 0.96, "gpt-4o": 0.97},
    "high": {"gpt-4o-mini": 0.5, "claude-haiku-4-5": 0.92, "gpt-4o": 0.97},
}
FLOOR = 0.75
SEEDS = range(10)


def _run(seed: int, calls: int, with_complexity: bool) -> tuple[dict[str, dict[str, int]], int]:
    """Route a seeded stream: what the last third of the calls went to, per
    level, and the calls sent to a model below the floor for their level."""
    rng = random.Random(seed)
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=seed, background=False)
    late: dict[str, dict[str, int]] = {"low": {}, "high": {}}
    below = 0
    try:
        for i in range(calls):
            level = "low" if rng.random() < 0.7 else "high"
            env: dict[str, object] = {"task_type": "code-generation", "quality_floor": FLOOR}
            if with_complexity:
                env["complexity"] = level
            d = tally.route(env)
            below += TRUE[level][d.model] < FLOOR
            ok = rng.random() < TRUE[level][d.model]
            tally.telemetry(d, success=ok, input_tokens=800, output_tokens=300)
            if i >= calls * 2 // 3:
                late[level][d.model] = late[level].get(d.model, 0) + 1
    finally:
        tally.close()
    return late, below


def _share(counts: dict[str, int], model: str) -> float:
    return counts.get(model, 0) / max(sum(counts.values()), 1)


@pytest.fixture(scope="module")
def runs() -> dict[bool, list[tuple[dict[str, dict[str, int]], int]]]:
    return {cx: [_run(seed, 2400, cx) for seed in SEEDS] for cx in (True, False)}


def test_hard_calls_learn_the_stronger_model_and_easy_calls_the_cheap_one(runs) -> None:
    split = 0
    for late, below in runs[True]:
        # Every seed: hard calls end on the middle model, never the cheap one,
        # and few calls went below the floor while the cell was learned.
        assert _share(late["high"], "gpt-4o-mini") <= 0.02
        assert _share(late["high"], "claude-haiku-4-5") >= 0.95
        assert below <= 50  # of 2,400 calls (2 to 37 over these 10 seeds)
        split += _share(late["low"], "gpt-4o-mini") >= 0.95
    # Easy calls go to the cheap model in most seeds (8 of 10; in the others an
    # early failure of it kept the middle one on them as well: safe, not cheapest).
    assert split >= 7


def test_without_complexity_hard_calls_follow_the_task_types_average(runs) -> None:
    with_cx = [below for _, below in runs[True]]
    without = [below for _, below in runs[False]]
    # Some seeds send every hard call to the cheap model (its average clears the floor).
    assert sum(b >= 300 for b in without) >= 1
    assert sum(with_cx) * 5 < sum(without)
    assert sum(_share(late["low"], "gpt-4o-mini") >= 0.95 for late, _ in runs[False]) < sum(
        _share(late["low"], "gpt-4o-mini") >= 0.95 for late, _ in runs[True])


def test_per_level_evidence_routes_easy_calls_cheap_and_hard_calls_strong() -> None:
    # Here the cheap model is below the floor on average (0.71): with evidence
    # per level (e.g. graded offline), easy calls still go to it.
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=2, background=False)
    rng = random.Random(2)
    truth = {"low": {"gpt-4o-mini": 0.96, "claude-haiku-4-5": 0.96, "gpt-4o": 0.97},
             "high": {"gpt-4o-mini": 0.45, "claude-haiku-4-5": 0.93, "gpt-4o": 0.97}}
    try:
        for _ in range(60):
            for level in ("low", "high"):
                d = tally.route(task_type="code-generation", quality_floor=0.8, complexity=level)
                for m in POOL:  # every model graded on the call, in the call's cell
                    tally.telemetry(d, model=m, success=rng.random() < truth[level][m])
        task = {s["model"]: s for s in tally.stats("code-generation", quality_floor=0.8)}
        assert task["gpt-4o-mini"]["mean_quality"] < 0.8
        got = {level: tally.route(task_type="code-generation", quality_floor=0.8,
                                  complexity=level).model for level in ("low", "high")}
        assert got == {"low": "gpt-4o-mini", "high": "claude-haiku-4-5"}
        # The same evidence, no complexity: the task type's average decides.
        assert tally.route(task_type="code-generation", quality_floor=0.8).model == (
            "claude-haiku-4-5")
    finally:
        tally.close()


def test_a_sparse_complexity_cell_backs_off_to_the_task_type() -> None:
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3, background=False)
    try:
        for _ in range(40):
            d = tally.route(task_type="qa", quality_floor=0.8, complexity="low")
            tally.telemetry(d, quality=0.9 if d.model == "gpt-4o-mini" else 0.95)
        task = {s["model"]: s for s in tally.stats("qa", quality_floor=0.8)}
        # Never seen: a high cell reads the task type's evidence.
        high = {s["model"]: s for s in tally.stats(
            "qa", envelope={"task_type": "qa", "quality_floor": 0.8, "complexity": "high"})}
        assert task["gpt-4o-mini"]["evidence"] > 0
        assert high["gpt-4o-mini"]["evidence"] == task["gpt-4o-mini"]["evidence"]
        assert high["gpt-4o-mini"]["mean_quality"] == task["gpt-4o-mini"]["mean_quality"]
    finally:
        tally.close()


# -- ComplexityThreshold ------------------------------------------------------------

CANDS = [
    Candidate(n, c, EMPTY_VIEW)
    for n, c in (("flash", 0.0004), ("mini", 0.001), ("haiku", 0.004), ("4o", 0.01),
                 ("sonnet", 0.015), ("o1", 0.06))
]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        # The article: simple intents stay cheap until 0.7, quality-sensitive
        # ones climb at 0.3 and 0.6, the rest start at the cheapest.
        ("classification", ["mini", "mini", "sonnet"]),
        ("reasoning", ["mini", "sonnet", "o1"]),
        ("summarisation", ["flash", "mini", "sonnet"]),
    ],
)
def test_the_articles_tiers_per_group_and_level(task: str, expected: list[str]) -> None:
    p = ComplexityThreshold()
    got = [
        p.plan(CANDS, 0.8, "o1", task_type=task, complexity=c).exploit
        for c in ("low", "medium", "high")
    ]
    assert got == expected


def test_without_complexity_it_routes_like_static_threshold() -> None:
    ct, st = ComplexityThreshold(), StaticThreshold()
    for floor in (0.5, 0.75, 0.9):
        assert (ct.plan(CANDS, floor, "o1", task_type="reasoning").exploit
                == st.plan(CANDS, floor, "o1", task_type="reasoning").exploit)


def test_the_floor_moves_the_tier_up_never_down() -> None:
    failing = ArmView(n=30, mean=0.3, se=0.05, latency_ms=None, output_tokens=None,
                      error_share=0.0, recent_errors=0.0, since_error=float("inf"), calls=30,
                      cost_usd=0.0, quality_obs=30, resets=0, total=9.0)
    cands = [Candidate(c.name, c.cost_usd, failing if c.name == "mini" else c.view)
             for c in CANDS]
    plan = ComplexityThreshold().plan(cands, 0.8, "o1", task_type="reasoning", complexity="low")
    assert "mini" in {d.model for d in plan.dropped}
    assert plan.exploit == "haiku"  # the next dearer model still allowed
    assert any("complexity low, group quality-sensitive: tier standard" in n for n in plan.notes)


def test_custom_rules_and_bad_rules() -> None:
    p = ComplexityThreshold(rules={"default": [(0.5, "economy"), (2.0, "top")]})
    assert p.plan(CANDS, 0.8, "o1", task_type="reasoning", complexity="low").exploit == "flash"
    assert p.plan(CANDS, 0.8, "o1", task_type="reasoning", complexity="high").exploit == "o1"
    with pytest.raises(InvalidFieldError, match="rules: .*'default'"):
        ComplexityThreshold(rules={"simple": [(2.0, "top")]})
    with pytest.raises(InvalidFieldError, match="tiers must be economy, standard, premium, top"):
        ComplexityThreshold(rules={"default": [(2.0, "gold")]})
    with pytest.raises(InvalidFieldError, match="groups without rules: hard"):
        ComplexityThreshold(groups={"reasoning": "hard"})


def test_named_tiers_stay_put_whatever_the_costs_say() -> None:
    p = ComplexityThreshold(tiers={"premium": "4o", "top": "o1"})
    # "4o" is third dearest here: by position premium would be sonnet.
    assert p.plan(CANDS, 0.8, "o1", task_type="reasoning", complexity="medium").exploit == "4o"
    assert p.plan(CANDS, 0.8, "o1", task_type="reasoning", complexity="low").exploit == "mini"
    with pytest.raises(InvalidFieldError, match="tiers: must name tiers of economy"):
        ComplexityThreshold(tiers={"gold": "o1"})


def test_through_tally_the_call_complexity_picks_the_tier() -> None:
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=1, background=False,
                  policy=ComplexityThreshold())
    try:
        got = {c: tally.route(task_type="reasoning", quality_floor=0.8, complexity=c).model
               for c in ("low", 0.5, 0.9)}
        assert got == {"low": "claude-haiku-4-5", 0.5: "claude-haiku-4-5", 0.9: "gpt-4o"}
        d = tally.route(task_type="translation", quality_floor=0.8, complexity=0.1)
        assert d.model == "gpt-4o-mini" and d.cell.endswith("|low")
        assert "complexity low, group default: tier economy" in d.explain()
        assert "complexity: low (learned in its own cell" in d.explain()
        plain = tally.route(task_type="translation", quality_floor=0.8)
        assert "complexity" not in plain.explain()
    finally:
        tally.close()


# -- the simulator ---------------------------------------------------------------------


def test_simulated_complexity_changes_the_truth_and_keeps_old_streams() -> None:
    sc = load_scenario("seed-complexity")
    r = run_comparison(sc, seed=3, calls=3000, routers=("always-cheapest",))
    cheap = r["routers"]["always-cheapest"]
    # Low-complexity reasoning calls are fine on the cheapest model, high ones are not.
    assert 0.2 < cheap["violation_rate"] < 0.6
    landscape = load_scenario("seed-landscape")
    a = simulate(landscape, [TallyRouter(landscape, 4)], seed=4, calls=1500)["tally"]
    b = simulate(landscape, [TallyRouter(landscape, 4, complexity=False)], seed=4,
                 calls=1500)["tally"]
    assert a.cost_usd == b.cost_usd  # no complexity in the scenario: nothing to strip


def test_the_bandit_with_the_complexity_cell_violates_less_than_without() -> None:
    sc = load_scenario("seed-complexity")
    extra = {"tally-nocx": lambda s, seed: TallyRouter(s, seed, complexity=False,
                                                       name="tally-nocx")}
    with_cx, without = [], []
    for seed in (1, 2, 3):
        r = run_comparison(sc, seed=seed, calls=4000, routers=("tally", "tally-nocx"),
                           extra=extra)["routers"]
        with_cx.append(r["tally"]["violation_rate"])
        without.append(r["tally-nocx"]["violation_rate"])
    # Seeds 1-3: 0.5%, 1.3%, 2.7% against 4.6%, 3.3%, 9.4%.
    assert all(a < b for a, b in zip(with_cx, without, strict=True))
    assert sum(with_cx) * 2 < sum(without)
    assert max(with_cx) < 0.03
