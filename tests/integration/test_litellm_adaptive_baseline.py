"""LiteLLM's Adaptive Router as a simulator baseline (tally_litellm.baseline)."""

from __future__ import annotations

import pytest

from tally_core.eval.sim import Scenario, load_scenario, run_comparison, simulate
from tally_litellm.baseline import ROUTERS, LiteLLMAdaptiveRouter


@pytest.fixture(scope="module")
def seed_landscape() -> Scenario:
    return load_scenario("seed-landscape")


def test_litellm_adaptive_router_runs_and_is_seeded(seed_landscape: Scenario) -> None:
    runs = [
        simulate(
            seed_landscape, [LiteLLMAdaptiveRouter(seed_landscape, seed=3)], seed=1, calls=1500
        )["litellm-adaptive"].to_dict()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    # Price tiers as priors: the cheapest model (tier 1, prior mean 0.3) is
    # hardly tried, so most of the cheap traffic goes to a pricier model.
    assert runs[0]["share"]["gemini-2.5-flash-lite"] < 0.2


def test_litellm_routers_join_a_comparison_by_name() -> None:
    r = run_comparison(
        "seed-landscape", seed=2, calls=600, routers=("litellm-adaptive-flat",), extra=ROUTERS
    )
    assert set(r["routers"]) == {"litellm-adaptive-flat", "always-best", "oracle"}
    assert 0.0 < r["routers"]["litellm-adaptive-flat"]["cost_vs_best"] < 1.0
