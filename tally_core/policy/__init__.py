"""Routing policies."""

from __future__ import annotations

from tally_core.policy.bandit import FloorBandit
from tally_core.policy.base import Candidate, Choice, Plan, Policy
from tally_core.policy.floor import prob_clears, verdict
from tally_core.policy.strategies import CostOptimised, StaticThreshold

__all__ = [
    "Candidate",
    "Choice",
    "CostOptimised",
    "FloorBandit",
    "Plan",
    "Policy",
    "StaticThreshold",
    "prob_clears",
    "verdict",
]
