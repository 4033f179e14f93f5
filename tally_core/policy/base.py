"""The policy interface: given the candidates that passed the hard filters and
what is known of each, decide where one call goes.

A policy works in two steps so that routing stays in microseconds:

* ``plan`` looks at the evidence (posterior per candidate, the floor) and
  precomputes everything that depends only on the learned state. Tally caches
  a plan until the state changes.
* ``pick`` turns a plan and this call's random draws into one choice. It must
  be cheap: a few comparisons, no allocation beyond the result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tally_core._state import ArmView
from tally_core.decision import Dropped, Phase

__all__ = ["Candidate", "Choice", "Plan", "Policy"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model that passed the hard filters, with its evidence for this context."""

    name: str
    cost_usd: float  # estimated cost of this call
    view: ArmView


@dataclass(frozen=True, slots=True)
class Choice:
    model: str
    phase: Phase
    confidence: float


@dataclass(slots=True)
class Plan:
    """Everything about a route that depends only on the learned state."""

    floor: float | None  # the bar applied (given floor, or parity target)
    exploit: str | None  # cheapest model that clears the bar with confidence
    fallback: str  # where calls go when nothing clears
    confidence: dict[str, float]  # P(quality >= bar) per candidate
    costs: dict[str, float]
    explore_rate: float = 0.0  # chance this call explores (when there is anything to)
    calibrate: list[tuple[str, int, int]] = field(default_factory=list)  # name, obs, target
    explore: list[tuple[str, float, float, float]] = field(
        default_factory=list
    )  # name, mean, saving, se
    dropped: list[Dropped] = field(default_factory=list)
    considered: list[tuple[str, float, float, float]] = field(default_factory=list)


class Policy(ABC):
    """Base class for routing policies."""

    @abstractmethod
    def plan(
        self,
        candidates: Sequence[Candidate],
        floor: float | None,
        fallback: str,
        *,
        time_sensitive: bool = False,
    ) -> Plan:
        """Precompute the state-dependent part of a route."""
        raise NotImplementedError("Policy.plan() must be implemented")

    @abstractmethod
    def pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        """Choose for one call. ``pending`` counts routes whose outcome is not in yet."""
        raise NotImplementedError("Policy.pick() must be implemented")

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Arguments that build a valid instance, for the shared policy tests."""
        return {}
