"""Routing policies. ``base.Policy`` enforces the floor; ``FloorBandit`` is
the default; ``CostOptimised``, ``StaticThreshold`` and ``ComplexityThreshold``
(the seed article's complexity tiers) are simpler ones to compare against on
your own traffic."""

from __future__ import annotations

from tally_core.policy.bandit import FloorBandit
from tally_core.policy.base import Candidate, Choice, Plan, Policy
from tally_core.policy.complexity import ComplexityThreshold
from tally_core.policy.cost import CostOptimised
from tally_core.policy.floor import beta_sf, prob_clears, verdict
from tally_core.policy.threshold import StaticThreshold

__all__ = [
    "Candidate",
    "Choice",
    "ComplexityThreshold",
    "CostOptimised",
    "FloorBandit",
    "Plan",
    "Policy",
    "StaticThreshold",
    "beta_sf",
    "prob_clears",
    "verdict",
]
