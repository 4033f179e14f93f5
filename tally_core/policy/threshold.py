"""StaticThreshold: route by the floor alone, to one of three price tiers.

No learning at all, as in "define three tiers with simple thresholds and
ship it": below ``cheap_below`` the cheapest model, below ``premium_from``
the middle of the pool by price, otherwise (and with no floor) the dearest.
What Tally learns is used only through the base class, which drops a model
whose evidence shows it below the floor; the tier then moves to the next
dearer model still allowed, never a cheaper one.

>>> from tally_core.learning import EMPTY_VIEW
>>> from tally_core.policy.base import Candidate
>>> p = StaticThreshold()
>>> cands = [Candidate(n, c, EMPTY_VIEW) for n, c in (("s", 0.001), ("m", 0.005), ("l", 0.02))]
>>> [p.plan(cands, f, "l").exploit for f in (0.5, 0.8, 0.9)]
['s', 'm', 'l']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tally_core.errors import InvalidFieldError
from tally_core.learning import TaskMemory
from tally_core.policy.base import Candidate, Choice, Plan, Policy, check_number

__all__ = ["StaticThreshold"]


class StaticThreshold(Policy):
    """Route by the floor to a price tier; never learns.

    Parameters
    ----------
    cheap_below
        Floors below this go to the cheapest allowed model.
    premium_from
        Floors at or above this go to the dearest allowed model; floors in
        between to the median model by price.
    """

    def __init__(
        self, *, cheap_below: float = 0.7, premium_from: float = 0.85, **base: Any
    ) -> None:
        super().__init__(**base)
        self.cheap_below = check_number("cheap_below", cheap_below, 0.0, 1.0)
        self.premium_from = check_number("premium_from", premium_from, 0.0, 1.0)
        if self.premium_from < self.cheap_below:
            raise InvalidFieldError(
                "premium_from",
                f"must be >= cheap_below ({self.cheap_below}), got {premium_from!r}",
            )

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
        ranked = sorted(costs, key=lambda m: costs[m])  # every candidate, by price
        exploit: str | None = None
        notes: list[str] = []
        if ranked:
            at, why = self._position(ranked, bar, task_type, complexity)
            ok = {c.name for c in survivors}
            exploit = next((m for m in ranked[at:] if m in ok), None)
            if why:
                notes.append(f"{why}: {exploit or safe}")
        return Plan(
            floor=bar,
            exploit=exploit,
            fallback=safe,
            confidence=dict(confidence),
            costs=dict(costs),
            notes=notes,
        )

    def _position(
        self, ranked: Sequence[str], bar: float, task_type: str | None, complexity: str | None
    ) -> tuple[int, str]:
        """The tier's position in ``ranked`` (the candidates by price, cheapest
        first), and a line for ``explain()`` saying why (empty: nothing to add)."""
        n = len(ranked)
        tier = 0 if bar < self.cheap_below else 2 if bar >= self.premium_from else 1
        return (0, n // 2, n - 1)[tier], ""

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
        return {"cheap_below": 0.7, "premium_from": 0.85}
