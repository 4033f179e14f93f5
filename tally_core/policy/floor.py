"""The posterior behind the quality floor: how likely a model's true quality
for a task type is at or above a bar, and what the evidence says of it.

Outcomes that are all 0 or 1 get a Beta posterior (a uniform prior, so 10
successes in 10 give P(q >= 0.9) = 0.69, not the 0.97 a plug-in normal
gives); graded outcomes a normal one whose variance is floored, so a run of
identical grades does not certify a model on a handful of calls.
"""

from __future__ import annotations

import math
from typing import Literal

from tally_core.learning import ArmView

__all__ = [
    "GRADED_VAR_FLOOR",
    "Verdict",
    "beta_sf",
    "posterior_mean",
    "posterior_sd",
    "prob_clears",
    "verdict",
]

Verdict = Literal["clears", "fails", "unknown", "uncertain"]

#: Smallest per-outcome variance assumed for graded (0-1) outcomes.
GRADED_VAR_FLOOR = 0.0025

_SQRT2 = math.sqrt(2.0)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def beta_sf(x: float, a: float, b: float) -> float:
    """P(X >= x) for X ~ Beta(a, b).

    >>> round(beta_sf(0.9, 11, 1), 3)  # 10 of 10 on a uniform prior
    0.686
    >>> beta_sf(0.0, 2, 3), beta_sf(1.0, 2, 3)
    (1.0, 0.0)
    """
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbt + a * math.log(x) + b * math.log1p(-x))
    # Use the fraction where it converges fast, the symmetry elsewhere.
    if x < (a + 1.0) / (a + b + 2.0):
        return 1.0 - front * _betacf(a, b, x) / a
    return front * _betacf(b, a, 1.0 - x) / b


def _beta_params(view: ArmView) -> tuple[float, float]:
    s = min(max(view.total, 0.0), view.n)
    return 1.0 + s, 1.0 + view.n - s


def posterior_sd(view: ArmView) -> float:
    """Standard deviation of the posterior of the mean quality.

    >>> from tally_core.learning import EMPTY_VIEW
    >>> round(posterior_sd(EMPTY_VIEW), 3)  # Beta(1, 1)
    0.289
    """
    if view.binary:
        a, b = _beta_params(view)
        return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    n = view.n
    var = max(view.se**2 * (n + 1.0), GRADED_VAR_FLOOR)
    return math.sqrt(var / (n + 1.0))


def posterior_mean(view: ArmView) -> float:
    if view.binary:
        a, b = _beta_params(view)
        return a / (a + b)
    return view.mean


def prob_clears(view: ArmView, floor: float) -> float:
    """Posterior probability that the true quality is at or above ``floor``.

    >>> from tally_core.learning import EMPTY_VIEW
    >>> round(prob_clears(EMPTY_VIEW, 0.5), 2)
    0.5
    """
    if view.binary:
        a, b = _beta_params(view)
        return beta_sf(floor, a, b)
    sd = posterior_sd(view)
    return 0.5 * (1.0 + math.erf((view.mean - floor) / (sd * _SQRT2)))


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

    * ``fails``: at least ``min_fail_obs`` outcomes and P(clears) <= ``fail_below``.
      Never routed to, in any phase.
    * ``clears``: at least ``min_obs`` outcomes and P(clears) >= ``confidence``.
    * ``unknown``: fewer than ``min_obs`` outcomes.
    * ``uncertain``: the rest.
    """
    p = prob_clears(view, floor)
    if view.n >= min_fail_obs and p <= fail_below:
        return "fails", p
    if view.n < min_obs:
        return "unknown", p
    if p >= confidence:
        return "clears", p
    return "uncertain", p
