"""LiteLLM's own Adaptive Router as a baseline for Tally's simulator.

It lives here, not in ``tally_core``, because it imports ``litellm``. Add it
to a comparison with ``run_comparison(..., extra=ROUTERS)``, or run
``python -m tally_litellm.bench routing``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

from tally_core.eval.sim import (
    RouterFactory,
    Scenario,
    SimRouter,
    TaskSpec,
    _catalog,
    _success_bar,
)

__all__ = ["LITELLM_REQUEST_TYPES", "ROUTERS", "LiteLLMAdaptiveRouter"]

#: Tally task type -> LiteLLM ``RequestType`` value (what its regex classifier
#: would say at best). Anything else is ``general``.
LITELLM_REQUEST_TYPES: dict[str, str] = {
    "code-generation": "code_generation",
    "code-debug": "code_generation",
    "code-review": "code_understanding",
    "architecture-design": "technical_design",
    "reasoning": "analytical_reasoning",
    "data-analysis": "analytical_reasoning",
    "creative-writing": "writing",
    "summarisation": "writing",
    "translation": "writing",
    "qa-simple": "factual_lookup",
    "extraction": "factual_lookup",
}


class LiteLLMAdaptiveRouter:
    """LiteLLM's Adaptive Router (``litellm.router_strategy.adaptive_router``),
    driven through its own bandit.

    Configured as a LiteLLM user would: weights quality 0.7 / cost 0.3 (its
    defaults), cost = input price per token (what its Router reads), no
    strengths, no minimum tier. ``tiers=True`` (``litellm-adaptive``) gives
    quality tier 1/2/3 by thirds of the pool sorted by input price (its
    priors: mean 0.3/0.5/0.7); ``tiers=False`` (``litellm-adaptive-flat``)
    gives no preferences, so every model gets its default tier 2. Each
    call: the task type maps to a ``RequestType``
    (``LITELLM_REQUEST_TYPES``), ``AdaptiveRouter.pick_model``'s own
    ``pick_best`` chooses (with a seeded rng), and the true outcome is fed with
    its own ``apply_delta``: +1 alpha when quality >= the floor, else +1 beta.
    A provider error is not fed (its ``record_turn`` ignores HTTP errors).
    Its 200-observation cap per cell applies. Needs ``litellm``.
    """

    name = "litellm-adaptive"

    def __init__(self, scenario: Scenario, seed: int = 0, tiers: bool = True) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            from litellm.router_strategy.adaptive_router import bandit
            from litellm.router_strategy.adaptive_router.adaptive_router import AdaptiveRouter
            from litellm.types.router import (
                AdaptiveRouterConfig,
                AdaptiveRouterPreferences,
                AdaptiveRouterWeights,
                RequestType,
            )
        except ImportError as exc:
            raise ImportError("LiteLLMAdaptiveRouter needs litellm installed") from exc
        self.use_tiers = tiers
        if not tiers:
            self.name = "litellm-adaptive-flat"
        catalog = _catalog(scenario)
        names = scenario.model_names()
        by_price = sorted(names, key=lambda m: catalog[m].input_cost_per_mtok or 0.0)
        tier_of = {m: 1 + (3 * i) // len(by_price) for i, m in enumerate(by_price)}
        self._costs = {m: (catalog[m].input_cost_per_mtok or 0.0) / 1e6 for m in names}
        self._bandit = bandit
        self._rt = RequestType
        self._ar = AdaptiveRouter(
            router_name="tally-bench",
            config=AdaptiveRouterConfig(
                available_models=names, weights=AdaptiveRouterWeights(quality=0.7, cost=0.3)
            ),
            model_to_prefs=(
                {m: AdaptiveRouterPreferences(quality_tier=tier_of[m]) for m in names}
                if self.use_tiers
                else {}
            ),
            model_to_cost=self._costs,
        )
        self.tiers = tier_of if tiers else {m: 2 for m in names}
        self._rng = random.Random(seed)

    def _request_type(self, task: TaskSpec) -> Any:
        return self._rt(LITELLM_REQUEST_TYPES.get(task.name, "general"))

    def choose(self, task: TaskSpec, envelope: dict[str, Any], pool: Sequence[str]) -> str:
        rt = self._request_type(task)
        cells = {m: self._ar.cell(rt, m) for m in pool}
        costs = {m: self._costs[m] for m in pool}
        return str(self._bandit.pick_best(cells, costs, 0.7, 0.3, rng=self._rng))

    def observe(
        self,
        task: TaskSpec,
        model: str,
        quality: float | None,
        errored: bool,
        input_tokens: int,
        output_tokens: int,
        latency_ms: float,
        cost_usd: float,
    ) -> None:
        if errored or quality is None:
            return
        rt = self._request_type(task)
        ok = quality >= _success_bar(task)
        self._ar._cells[(rt, model)] = self._bandit.apply_delta(
            self._ar.cell(rt, model), 1.0 if ok else 0.0, 0.0 if ok else 1.0
        )


def _factory(tiers: bool) -> RouterFactory:
    def build(scenario: Scenario, seed: int) -> SimRouter:
        return LiteLLMAdaptiveRouter(scenario, seed=seed, tiers=tiers)

    return build


#: Name -> factory, for ``tally_core.eval.sim.run_comparison(extra=ROUTERS)``.
ROUTERS: dict[str, RouterFactory] = {
    "litellm-adaptive": _factory(True),
    "litellm-adaptive-flat": _factory(False),
}
