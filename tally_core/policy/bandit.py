"""FloorBandit: the cheapest model that clears the floor, learned online.

The quality floor is a constraint, not a weight. Each candidate gets a verdict
from its posterior (see ``policy.floor``):

* **calibrate** — candidates with too little evidence, cheapest first, get
  calls until they have ``min_obs`` outcomes; a candidate that looks likely to
  clear (P >= 0.5) keeps getting calls up to ``promising_obs`` so it can be
  certified quickly. Only candidates cheaper than the current pick are worth
  calibrating (a dearer one could never be chosen), except under parity,
  where the best model must be known.
* **exploit** — the cheapest candidate whose P(quality >= floor) reaches
  ``confidence``. With ``time_sensitive``, the fastest cleared candidate whose
  cost is within ``latency_cost_factor`` of the cheapest cleared one.
* **explore** — on a share of calls set by a risk budget (``explore`` divided
  by the chance the best-value candidate is below the floor, capped at
  ``max_explore``), an uncertain candidate cheaper than the pick, gated by a
  Thompson draw: it is tried only if a sample from its posterior clears the
  floor, and among those, the one with the largest expected saving.
  Exploration is spent where it can pay off
  (a cheaper model certified), and shrinks by itself as evidence says a
  candidate is below the floor.
* **fallback** — nothing clears: the configured fallback model.

A candidate whose evidence shows it below the floor (P < ``fail_below``) is
never returned, in any phase. Evidence is discounted (see ``_state``), so a
model that improves is noticed when its old failures have faded, and one that
degrades is caught by the drift detector within tens of calls.

>>> from tally_core._state import EMPTY_VIEW
>>> from tally_core.policy.base import Candidate
>>> p = FloorBandit()
>>> plan = p.plan([Candidate("cheap", 0.001, EMPTY_VIEW), Candidate("big", 0.01, EMPTY_VIEW)],
...               0.8, "big")
>>> [name for name, _, _ in plan.calibrate]
['cheap', 'big']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tally_core.decision import Dropped
from tally_core.errors import InvalidFieldError
from tally_core.policy.base import Candidate, Choice, Plan, Policy
from tally_core.policy.floor import verdict

__all__ = ["FloorBandit"]


def _check(name: str, value: float, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InvalidFieldError(name, f"must be a number between {lo} and {hi}, got {value!r}")
    return float(value)


class FloorBandit(Policy):
    """Route to the cheapest model that clears the quality floor with confidence.

    Parameters
    ----------
    confidence
        Posterior probability of clearing the floor needed to exploit a model.
    explore
        Exploration budget, as risk: the expected share of calls that
        exploration may send to a model below the floor. A cheaper candidate
        that is probably good is explored on up to ``max_explore`` of calls
        (each such call is unlikely to miss the floor); one that is probably
        bad, on about ``explore`` of them.
    fail_below
        A model whose probability of clearing is below this is excluded.
    min_obs
        Outcomes a candidate needs before it leaves calibration.
    promising_obs
        Calibration keeps feeding a likely-good cheap candidate up to this many.
    min_fail_obs
        Outcomes needed before evidence may exclude a model.
    parity_tolerance
        With no floor, a model within this of the best observed mean is at parity.
    latency_cost_factor
        Time-sensitive calls may pay up to this multiple of the cheapest
        cleared model's cost for a faster cleared model.
    """

    def __init__(
        self,
        *,
        confidence: float = 0.9,
        explore: float = 0.03,
        fail_below: float = 0.05,
        min_obs: int = 3,
        promising_obs: int = 20,
        min_fail_obs: int = 3,
        parity_tolerance: float = 0.02,
        latency_cost_factor: float = 4.0,
        max_explore: float = 0.25,
    ) -> None:
        self.confidence = _check("confidence", confidence, 0.5, 0.9999)
        self.explore = _check("explore", explore, 0.0, 0.5)
        self.fail_below = _check("fail_below", fail_below, 0.0, 0.5)
        self.min_obs = int(_check("min_obs", min_obs, 1, 10_000))
        self.promising_obs = int(_check("promising_obs", promising_obs, self.min_obs, 100_000))
        self.min_fail_obs = int(_check("min_fail_obs", min_fail_obs, 1, 10_000))
        self.parity_tolerance = _check("parity_tolerance", parity_tolerance, 0.0, 0.5)
        self.latency_cost_factor = _check("latency_cost_factor", latency_cost_factor, 1.0, 1e6)
        self.max_explore = _check("max_explore", max_explore, self.explore, 1.0)

    def plan(
        self,
        candidates: Sequence[Candidate],
        floor: float | None,
        fallback: str,
        *,
        time_sensitive: bool = False,
    ) -> Plan:
        cands = sorted(candidates, key=lambda c: c.cost_usd)
        costs = {c.name: c.cost_usd for c in cands}
        considered = [(c.name, c.view.mean, c.view.n, c.cost_usd) for c in cands]
        parity = floor is None
        best: Candidate | None = None
        if parity:
            known = [c for c in cands if c.view.n >= self.min_obs]
            if not known:
                # Nothing to be at parity with yet: learn every candidate.
                return Plan(
                    floor=None,
                    exploit=None,
                    fallback=fallback,
                    confidence={c.name: 0.0 for c in cands},
                    costs=costs,
                    calibrate=[(c.name, int(c.view.n), self.min_obs) for c in cands],
                    considered=considered,
                )
            best = max(known, key=lambda c: (c.view.mean, -c.cost_usd))
            bar = max(best.view.mean - self.parity_tolerance, 0.0)
        else:
            assert floor is not None
            bar = floor

        verdicts: dict[str, str] = {}
        v: str
        conf: dict[str, float] = {}
        dropped: list[Dropped] = []
        for c in cands:
            v, p = verdict(
                c.view,
                bar,
                confidence=self.confidence,
                fail_below=self.fail_below,
                min_obs=self.min_obs,
                min_fail_obs=self.min_fail_obs,
            )
            if c is best:
                v, p = "clears", max(p, 0.5)  # the parity reference is at parity by definition
            verdicts[c.name], conf[c.name] = v, p
            if v == "fails":
                what = "the floor" if not parity else "parity with the best"
                dropped.append(
                    Dropped(
                        c.name,
                        f"below {what} ({bar:.2f}): quality {c.view.mean:.3f} "
                        f"± {c.view.se:.3f} over {c.view.n:.0f} calls, "
                        f"P(clears) = {p:.3f}",
                    )
                )

        cleared = [c for c in cands if verdicts[c.name] == "clears"]
        exploit = cleared[0] if cleared else None
        if exploit is not None and time_sensitive:
            cap = exploit.cost_usd * self.latency_cost_factor
            timed = [c for c in cleared if c.cost_usd <= cap and c.view.latency_ms is not None]
            if timed:
                exploit = min(timed, key=lambda c: (c.view.latency_ms, c.cost_usd))

        limit = math.inf if exploit is None else exploit.cost_usd
        calibrate: list[tuple[str, int, int]] = []
        explore: list[tuple[str, float, float, float]] = []
        for c in cands:
            v = verdicts[c.name]
            worth = c.cost_usd < limit or (parity and v == "unknown")
            if not worth or v in ("fails", "clears"):
                continue
            if v == "unknown":
                calibrate.append((c.name, int(c.view.n), self.min_obs))
            elif conf[c.name] >= 0.5 and c.view.n < self.promising_obs:
                calibrate.append((c.name, int(c.view.n), self.promising_obs))
            if v == "uncertain" and c.cost_usd < limit:
                ref = (
                    limit
                    if exploit is not None
                    else costs[fallback]
                    if fallback in costs
                    else limit
                )
                saving = (ref - c.cost_usd) if math.isfinite(ref) else 1.0
                explore.append((c.name, c.view.mean, max(saving, 1e-12), c.view.se))
        # Exploration is budgeted in risk, not in calls: a candidate that is
        # probably good may take more calls (up to max_explore) because each
        # one is unlikely to land below the floor; the expected share of
        # calls sent below the floor by exploration stays near `explore`.
        rate = 0.0
        if explore:
            target = max(explore, key=lambda e: e[2] * conf[e[0]])
            risk = max(1.0 - conf[target[0]], 1e-6)
            rate = min(max(self.explore / risk, self.explore), self.max_explore)
        return Plan(
            floor=bar,
            explore_rate=rate,
            exploit=None if exploit is None else exploit.name,
            fallback=fallback,
            confidence=conf,
            costs=costs,
            calibrate=calibrate,
            explore=explore,
            dropped=dropped,
            considered=considered,
        )

    def pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        conf = plan.confidence
        for name, n, target in plan.calibrate:  # cheapest first
            if n + pending.get(name, 0) < target:
                return Choice(name, "calibrate", conf.get(name, 0.0))
        if plan.explore and plan.floor is not None and uniform() < plan.explore_rate:
            # Thompson-gated, value-weighted: among cheaper uncertain models
            # whose posterior draw clears the floor, the one with the largest
            # expected saving (saving if certified x chance it clears).
            best, best_value = None, 0.0
            for name, mean, saving, se in plan.explore:
                value = saving * conf[name]
                if value > best_value and mean + se * normal() >= plan.floor:
                    best, best_value = name, value
            if best is not None:
                return Choice(best, "explore", conf[best])
        if plan.exploit is not None:
            return Choice(plan.exploit, "exploit", conf[plan.exploit])
        return Choice(plan.fallback, "fallback", conf.get(plan.fallback, 0.0))

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"confidence": 0.9, "explore": 0.03}
