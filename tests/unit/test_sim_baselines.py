"""Baseline routers and ``run_comparison`` in ``tally_core.eval.sim``: real numbers
from short seeded runs (no timing assertions)."""

from __future__ import annotations

import pytest

from tally_core.eval.sim import (
    CheapestRouter,
    EpsilonGreedyRouter,
    FixedRouter,
    OracleRouter,
    Scenario,
    ThompsonRouter,
    ThresholdRouter,
    load_scenario,
    run_comparison,
    simulate,
)

TINY = {
    "name": "tiny",
    "calls": 400,
    "warmup": 0,
    "fallback": "big",
    "models": [
        {
            "name": "small",
            "input_cost_per_mtok": 1.0,
            "output_cost_per_mtok": 1.0,
            "context_window": 100_000,
            "supports_tools": True,
        },
        {
            "name": "big",
            "input_cost_per_mtok": 10.0,
            "output_cost_per_mtok": 10.0,
            "context_window": 100_000,
            "supports_tools": True,
        },
    ],
    "tasks": {
        "classification": {
            "share": 0.5,
            "floor": 0.8,
            "input_tokens": 1000,
            "output_tokens": 0,
            "quality": {"small": 0.9, "big": 0.95},
        },
        "reasoning": {
            "share": 0.5,
            "floor": 0.8,
            "outcome": "bernoulli",
            "input_tokens": 1000,
            "output_tokens": 0,
            "quality": {"small": 0.5, "big": 0.9},
        },
    },
}


@pytest.fixture(scope="module")
def seed_landscape() -> Scenario:
    return load_scenario("seed-landscape")


def test_oracle_never_violates(seed_landscape: Scenario) -> None:
    for name in ("seed-landscape", "drift", "new-model", "outage"):
        sc = load_scenario(name)
        res = simulate(sc, [OracleRouter.for_scenario(sc)], seed=3, calls=3000)["oracle"]
        assert res.violations_after_warmup == 0, name


def test_oracle_ranks_by_call_cost() -> None:
    # Input price alone would pick "a"; with 1000 output tokens "b" is cheaper.
    sc = Scenario.from_dict(
        {
            **TINY,
            "models": [
                {"name": "a", "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 50.0},
                {"name": "b", "input_cost_per_mtok": 2.0, "output_cost_per_mtok": 2.0},
            ],
            "fallback": "b",
            "tasks": {
                "qa-simple": {
                    "share": 1.0,
                    "floor": 0.8,
                    "input_tokens": 100,
                    "output_tokens": 1000,
                    "quality": {"a": 0.9, "b": 0.9},
                }
            },
        }
    )
    res = simulate(sc, [OracleRouter.for_scenario(sc)], seed=0, calls=50)["oracle"]
    assert res.share["b"] == 1.0


def test_metrics_hand_checked() -> None:
    sc = Scenario.from_dict(TINY)
    res = simulate(sc, [FixedRouter("small-only", "small")], seed=0, calls=400)["small-only"]
    reasoning = res.per_task["reasoning"]["calls"]
    # small is below the floor on reasoning only: every reasoning call violates.
    assert res.violations_after_warmup == reasoning
    assert res.violation_rate == pytest.approx(reasoning / 400)
    assert res.mean_quality == pytest.approx((0.9 * (400 - reasoning) + 0.5 * reasoning) / 400)
    assert res.share == {"small": 1.0, "big": 0.0}

    r = run_comparison(sc, seed=0, calls=400, routers=("always-cheapest",))["routers"]
    best, orc, cheap = r["always-best"], r["oracle"], r["always-cheapest"]
    assert best["oracle_savings_share"] == 0.0
    assert orc["oracle_savings_share"] == 1.0
    assert orc["violation_rate"] == 0.0
    # The oracle sends classification to small (a tenth of big's price), and
    # reasoning to big; both see the same token counts, call for call.
    bt = best["per_task"]
    assert orc["cost_usd"] == pytest.approx(
        bt["reasoning"]["cost_usd"] + 0.1 * bt["classification"]["cost_usd"]
    )
    assert cheap["cost_vs_best"] == pytest.approx(0.1)
    assert cheap["violation_rate"] == pytest.approx(reasoning / 400)


def test_always_cheapest_violates_on_hard_tasks(seed_landscape: Scenario) -> None:
    res = simulate(seed_landscape, [CheapestRouter(seed_landscape)], seed=1, calls=3000)
    per_task = res["always-cheapest"].per_task
    for hard in ("reasoning", "code-generation", "architecture-design"):
        assert per_task[hard]["violations"] > 0.9 * (per_task[hard]["calls"] - 100)
    for easy in ("classification", "formatting", "summarisation"):
        assert per_task[easy]["violations"] == 0


def test_threshold_router_is_deterministic(seed_landscape: Scenario) -> None:
    a = simulate(seed_landscape, [ThresholdRouter(seed_landscape, seed=5)], seed=2, calls=2000)
    b = simulate(seed_landscape, [ThresholdRouter(seed_landscape, seed=5)], seed=2, calls=2000)
    assert a["threshold"].to_dict() == b["threshold"].to_dict()
    # Simple task types never reach the most expensive tier.
    assert "o1" not in a["threshold"].per_task["classification"]["models"]


def test_learning_baselines_are_seeded(seed_landscape: Scenario) -> None:
    for make in (
        lambda: ThompsonRouter(seed=4),
        lambda: EpsilonGreedyRouter(seed_landscape, seed=4),
    ):
        x = simulate(seed_landscape, [make()], seed=2, calls=1500)
        y = simulate(seed_landscape, [make()], seed=2, calls=1500)
        assert list(x.values())[0].to_dict() == list(y.values())[0].to_dict()


def test_tally_saves_and_keeps_the_floor_on_drift() -> None:
    routers = ("tally", "thompson", "epsilon-greedy", "threshold")
    r = run_comparison("drift", seed=1, calls=6000, routers=routers)["routers"]
    tally = r["tally"]
    assert tally["cost_vs_best"] < 0.35
    assert tally["oracle_savings_share"] > 0.75
    assert tally["violation_rate"] < 0.02
    # Thompson on success buys its low violation rate with the premium models:
    # Tally stays within half a point of it at a fraction of its cost ...
    assert tally["violation_rate"] < r["thompson"]["violation_rate"] + 0.005
    assert tally["cost_usd"] < 0.5 * r["thompson"]["cost_usd"]
    # ... and violates far less than the baselines that spend about as little.
    assert tally["violation_rate"] < 0.5 * r["epsilon-greedy"]["violation_rate"]
    assert tally["violation_rate"] < 0.5 * r["threshold"]["violation_rate"]
    (deg,) = [a for a in tally["adaptation_calls"] if a["kind"] == "degrade"]
    assert deg["calls_until_adapted"] <= 150
