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
* **explore** — with probability ``explore``, an uncertain candidate cheaper
  than the pick, gated by a Thompson draw: it is tried only if a sample from
  its posterior clears the floor. Exploration is spent where it can pay off
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
        Share of calls (at most) spent exploring cheaper uncertain models.
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
        explore: float = 0.05,
        fail_below: float = 0.05,
        min_obs: int = 5,
        promising_obs: int = 15,
        min_fail_obs: int = 3,
        parity_tolerance: float = 0.02,
        latency_cost_factor: float = 4.0,
    ) -> None:
        self.confidence = _check("confidence", confidence, 0.5, 0.9999)
        self.explore = _check("explore", explore, 0.0, 0.5)
        self.fail_below = _check("fail_below", fail_below, 0.0, 0.5)
        self.min_obs = int(_check("min_obs", min_obs, 1, 10_000))
        self.promising_obs = int(_check("promising_obs", promising_obs, self.min_obs, 100_000))
        self.min_fail_obs = int(_check("min_fail_obs", min_fail_obs, 1, 10_000))
        self.parity_tolerance = _check("parity_tolerance", parity_tolerance, 0.0, 0.5)
        self.latency_cost_factor = _check("latency_cost_factor", latency_cost_factor, 1.0, 1e6)

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
        explore: list[tuple[str, float, float]] = []
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
                explore.append((c.name, c.view.mean, c.view.se))
        return Plan(
            floor=bar,
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
        if plan.explore and plan.floor is not None and uniform() < self.explore:
            for name, mean, se in plan.explore:
                if mean + se * normal() >= plan.floor:
                    return Choice(name, "explore", conf[name])
        if plan.exploit is not None:
            return Choice(plan.exploit, "exploit", conf[plan.exploit])
        return Choice(plan.fallback, "fallback", conf.get(plan.fallback, 0.0))

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"confidence": 0.9, "explore": 0.05}
