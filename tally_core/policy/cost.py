"""CostOptimised: the cheapest model whose estimated quality clears the floor.

For teams that want to start simpler than ``FloorBandit``, or to compare on
their own traffic (``Tally(models, policy=CostOptimised())``). Each model
cheaper than the current pick gets ``min_obs`` outcomes first (cheapest
first); after that a model is used as soon as its posterior mean is at or
above the floor. No confidence margin, no learning budget: it saves more
while evidence is thin and misses the floor more often. The floor stays a
hard constraint all the same: the base class drops every model the evidence
shows below it.

>>> from tally_core.learning import EMPTY_VIEW
>>> from tally_core.policy.base import Candidate
>>> p = CostOptimised(min_obs=5)
>>> plan = p.plan([Candidate("cheap", 0.001, EMPTY_VIEW)], 0.8, "cheap")
>>> plan.calibrate
[('cheap', 0, 5)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tally_core.learning import TaskMemory
from tally_core.policy.base import Candidate, Choice, Plan, Policy, check_number
from tally_core.policy.floor import posterior_mean

__all__ = ["CostOptimised"]


class CostOptimised(Policy):
    """The cheapest model whose posterior mean quality clears the floor.

    Parameters
    ----------
    min_obs
        Outcomes each model cheaper than the pick gets before it is judged.
    """

    def __init__(self, *, min_obs: int = 5, **base: Any) -> None:
        super().__init__(**base)
        self.min_obs = int(check_number("min_obs", min_obs, 1, 10_000))

    def _plan(
        self,
        survivors: Sequence[Candidate],
        bar: float,
        safe: str,
        confidence: Mapping[str, float],
        costs: Mapping[str, float],
        *,
        memory: TaskMemory,
        leader: str | None,
        time_sensitive: bool,
        task_type: str | None = None,
        complexity: str | None = None,
    ) -> Plan:
        known = [c for c in survivors if c.view.n >= self.min_obs]
        exploit = next((c for c in known if posterior_mean(c.view) >= bar), None)
        limit = exploit.cost_usd if exploit is not None else float("inf")
        calibrate = [
            (c.name, int(c.view.n), self.min_obs)
            for c in survivors
            if c.view.n < self.min_obs and c.cost_usd < limit
        ]
        return Plan(
            floor=bar,
            exploit=None if exploit is None else exploit.name,
            fallback=safe,
            confidence=dict(confidence),
            costs=dict(costs),
            calibrate=calibrate,
        )

    def _pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        return plan.settled()

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"min_obs": 5}
