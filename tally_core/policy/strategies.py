"""The simpler routing strategies of the seed article, as Tally policies.

``FloorBandit`` is the default and the one the benchmarks favour. These two
exist for teams that want to start simpler, or to compare on their own
traffic (``Tally(models, policy=...)``); both keep the floor a hard
constraint — a model with evidence of failing it is never chosen:

* ``CostOptimised`` — the cheapest model whose *estimated* quality (the
  posterior mean) is at or above the floor: no confidence margin, no
  exploration budget. It saves more than ``FloorBandit`` while evidence is
  thin and misses the floor more often, because a mean just above the floor
  is trusted as it is.
* ``StaticThreshold`` — no learning at all: the floor picks a price tier
  (below ``cheap_below``: the cheapest model; below ``premium_from``: the
  middle of the pool by price; otherwise the dearest), as in "define three
  tiers with simple thresholds and ship it". What Tally learns is used only
  to skip a model whose evidence shows it failing the floor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tally_core.decision import Dropped
from tally_core.errors import InvalidFieldError
from tally_core.policy.bandit import FloorBandit, _check
from tally_core.policy.base import Candidate, Choice, Plan, Policy
from tally_core.policy.floor import prob_clears

__all__ = ["CostOptimised", "StaticThreshold"]


class CostOptimised(FloorBandit):
    """The cheapest model whose estimated quality clears the floor.

    Each model gets ``min_obs`` outcomes first (cheapest first, only models
    cheaper than the current pick); after that a model is used as soon as its
    posterior mean is at or above the floor, and dropped once it is clearly
    below (P(clears) < ``fail_below``). No exploration.

    >>> from tally_core._state import EMPTY_VIEW
    >>> p = CostOptimised(min_obs=5)
    >>> plan = p.plan([Candidate("cheap", 0.001, EMPTY_VIEW)], 0.8, "cheap")
    >>> plan.calibrate
    [('cheap', 0, 5)]
    """

    def __init__(
        self,
        *,
        min_obs: int = 5,
        fail_below: float = 0.05,
        min_fail_obs: int = 3,
        parity_tolerance: float = 0.02,
        latency_cost_factor: float = 4.0,
    ) -> None:
        min_obs = int(_check("min_obs", min_obs, 1, 10_000))
        super().__init__(
            confidence=0.5,  # P(mean >= floor) >= 0.5: the point estimate clears
            explore=0.0,
            max_explore=0.0,
            fail_below=fail_below,
            min_obs=min_obs,
            promising_obs=min_obs,
            min_fail_obs=min_fail_obs,
            parity_tolerance=parity_tolerance,
            latency_cost_factor=latency_cost_factor,
        )

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"min_obs": 5}


class StaticThreshold(Policy):
    """Route by the floor alone, to one of three price tiers; never learns.

    Parameters
    ----------
    cheap_below
        Floors below this go to the cheapest allowed model.
    premium_from
        Floors at or above this, and calls with no floor, go to the dearest
        allowed model; floors in between to the median model by price.
    fail_below, min_fail_obs
        A model with at least ``min_fail_obs`` outcomes and P(clears) below
        ``fail_below`` is skipped for the next dearer one (the floor stays a
        hard constraint).

    >>> from tally_core._state import EMPTY_VIEW
    >>> p = StaticThreshold()
    >>> cands = [Candidate(n, c, EMPTY_VIEW) for n, c in (("s", 0.001), ("m", 0.005), ("l", 0.02))]
    >>> [p.plan(cands, f, "l").exploit for f in (0.5, 0.8, 0.9, None)]
    ['s', 'm', 'l', 'l']
    """

    def __init__(
        self,
        *,
        cheap_below: float = 0.7,
        premium_from: float = 0.85,
        fail_below: float = 0.05,
        min_fail_obs: int = 3,
    ) -> None:
        self.cheap_below = _check("cheap_below", cheap_below, 0.0, 1.0)
        self.premium_from = _check("premium_from", premium_from, 0.0, 1.0)
        if self.premium_from < self.cheap_below:
            raise InvalidFieldError(
                "premium_from",
                f"must be >= cheap_below ({self.cheap_below}), got {premium_from!r}",
            )
        self.fail_below = _check("fail_below", fail_below, 0.0, 0.5)
        self.min_fail_obs = int(_check("min_fail_obs", min_fail_obs, 1, 10_000))

    def plan(
        self,
        candidates: Sequence[Candidate],
        floor: float | None,
        fallback: str,
        *,
        time_sensitive: bool = False,
    ) -> Plan:
        cands = sorted(candidates, key=lambda c: c.cost_usd)
        conf: dict[str, float] = {}
        usable: list[Candidate] = []
        dropped: list[Dropped] = []
        for c in cands:
            p = prob_clears(c.view, floor) if floor is not None else 1.0
            conf[c.name] = p
            if floor is not None and c.view.n >= self.min_fail_obs and p < self.fail_below:
                dropped.append(
                    Dropped(
                        c.name,
                        f"below the floor ({floor:.2f}): quality {c.view.mean:.3f} "
                        f"over {c.view.n:.0f} calls, P(clears) = {p:.3f}",
                    )
                )
            else:
                usable.append(c)
        tier = (
            0
            if floor is not None and floor < self.cheap_below
            else 2
            if floor is None or floor >= self.premium_from
            else 1
        )
        exploit: str | None = None
        if usable:
            # The tier's model among all candidates; if the evidence rules it
            # out, the next dearer usable one (never a cheaper one).
            at = (0, len(cands) // 2, len(cands) - 1)[tier]
            ok = {c.name for c in usable}
            exploit = next((c.name for c in cands[at:] if c.name in ok), None)
        return Plan(
            floor=floor,
            exploit=exploit,
            fallback=fallback,
            confidence=conf,
            costs={c.name: c.cost_usd for c in cands},
            dropped=dropped,
            considered=[(c.name, c.view.mean, c.view.n, c.cost_usd) for c in cands],
        )

    def pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        if plan.exploit is not None:
            return Choice(plan.exploit, "exploit", plan.confidence.get(plan.exploit, 0.0))
        return Choice(plan.fallback, "fallback", plan.confidence.get(plan.fallback, 0.0))

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"cheap_below": 0.7, "premium_from": 0.85}
