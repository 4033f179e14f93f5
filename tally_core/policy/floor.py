"""The quality floor as a hard constraint: which candidates the evidence
certifies, which it shows failing, and which it cannot yet tell."""

from __future__ import annotations

import math
from typing import Literal

from tally_core._state import ArmView

__all__ = ["Verdict", "prob_clears", "verdict"]

Verdict = Literal["clears", "fails", "unknown", "uncertain"]

_SQRT2 = math.sqrt(2.0)


def prob_clears(view: ArmView, floor: float) -> float:
    """Posterior probability that the true quality is at or above ``floor``.

    A normal approximation to the posterior of the mean (see ``_state``).

    >>> from tally_core._state import EMPTY_VIEW
    >>> round(prob_clears(EMPTY_VIEW, 0.5), 2)
    0.5
    """
    return 0.5 * (1.0 + math.erf((view.mean - floor) / (view.se * _SQRT2)))


def verdict(
    view: ArmView,
    floor: float,
    *,
    confidence: float,
    fail_below: float,
    min_obs: float,
    min_fail_obs: float,
) -> tuple[Verdict, float]:
    """Classify one candidate against the floor; also return P(clears).

    * ``fails``: at least ``min_fail_obs`` outcomes and P(clears) < ``fail_below``.
      Never routed to, in any phase.
    * ``clears``: at least ``min_obs`` outcomes and P(clears) >= ``confidence``.
    * ``unknown``: fewer than ``min_obs`` outcomes: needs calibration.
    * ``uncertain``: the rest: worth exploring only if cheaper than the pick.
    """
    p = prob_clears(view, floor)
    if view.n >= min_fail_obs and p < fail_below:
        return "fails", p
    if view.n < min_obs:
        return "unknown", p
    if p >= confidence:
        return "clears", p
    return "uncertain", p
