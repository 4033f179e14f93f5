"""The policy interface, and the one guarantee every policy inherits.

``Policy.plan`` is public and final in spirit, as river's ``Policy.pull()``
handles burn-in before it calls ``_pull()``: it sets the bar (the floor, or
parity with the best model once every candidate is calibrated), gives every
candidate a verdict from its posterior, drops those the evidence shows below
the bar, settles the *safe arm* (the fallback, unless the evidence shows the
fallback itself below the floor and another model above it), and only then
hands the survivors to the concrete policy's ``_plan``. ``Policy.pick`` runs
the calibration the plan asks for, then the concrete ``_pick``, and refuses
any choice outside the plan's ``allowed`` models. So no policy can route to
a model the evidence shows failing the floor, in any phase.

A policy works in two steps so that routing stays in microseconds:

* ``plan`` depends only on the learned state; Tally caches it until the
  state of that task type changes.
* ``pick`` turns a plan and this call's random draws into one choice: a few
  comparisons, no allocation beyond the result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tally_core.decision import Dropped, Phase
from tally_core.errors import InvalidFieldError
from tally_core.learning import EMPTY_MEMORY, ArmView, TaskMemory
from tally_core.policy.floor import posterior_mean, posterior_sd, prob_clears

__all__ = ["Candidate", "Choice", "Plan", "Policy", "check_number"]


def check_number(name: str, value: float, lo: float, hi: float) -> float:
    """``value`` as a float, or ``InvalidFieldError`` naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InvalidFieldError(name, f"must be a number between {lo} and {hi}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model that passed the hard filters, with its evidence for this context.

    ``cost_usd`` is what the policy ranks by: the realised cost per call of
    this model on this task type (see ``Tally``), not a nominal payload's.
    """

    name: str
    cost_usd: float
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
    exploit: str | None  # the model exploited, if any
    fallback: str  # the safe arm: where calls go when nothing is exploited
    confidence: dict[str, float]  # P(quality >= bar) per candidate
    costs: dict[str, float]
    allowed: frozenset[str] = frozenset()  # every model a pick may return (set by the base)
    calibrate: list[tuple[str, int, int]] = field(default_factory=list)  # name, obs, target
    explore: list[str] = field(default_factory=list)  # models the plan may learn on
    dropped: list[Dropped] = field(default_factory=list)
    considered: list[tuple[str, float, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines for explain()
    data: Any = None  # the concrete policy's own precomputation, for its _pick
    calibrating: bool = False  # the base's parity calibration: no concrete plan yet

    def settled(self) -> Choice:
        """The choice of a policy that never explores: the exploited model, else the
        fallback (``CostOptimised`` and ``StaticThreshold`` pick this way)."""
        if self.exploit is not None:
            return Choice(self.exploit, "exploit", self.confidence.get(self.exploit, 0.0))
        return Choice(self.fallback, "fallback", self.confidence.get(self.fallback, 0.0))


class Policy(ABC):
    """Base class for routing policies: implement ``_plan`` and ``_pick``.

    Parameters every policy shares (subclasses pass them to ``__init__``):

    fail_below, min_fail_obs
        A candidate with at least ``min_fail_obs`` outcomes and P(clears)
        at or below ``fail_below`` is dropped: strong evidence only (or with
        3 outcomes and P at or below ``fail_below`` squared: overwhelming).
    confidence
        P(clears) with which a model replaces a fallback that the evidence
        shows below the floor.
    fallback_fails
        P(clears) at or below which the fallback counts as below the floor.
    parity_tolerance, parity_min_obs
        With no floor, the bar is the best calibrated model's mean less
        ``parity_tolerance``; every candidate first gets ``parity_min_obs``
        outcomes, and any whose upper bound could still top the reference by
        more than the tolerance gets up to twice that, so the reference is
        not an early lucky draw.
    """

    def __init__(
        self,
        *,
        fail_below: float = 0.001,
        min_fail_obs: int = 10,
        confidence: float = 0.95,
        fallback_fails: float = 0.05,
        parity_tolerance: float = 0.02,
        parity_min_obs: int = 20,
    ) -> None:
        self.fail_below = check_number("fail_below", fail_below, 0.0, 0.5)
        self.min_fail_obs = int(check_number("min_fail_obs", min_fail_obs, 1, 10_000))
        self.confidence = check_number("confidence", confidence, 0.5, 0.9999)
        self.fallback_fails = check_number("fallback_fails", fallback_fails, 0.0, 0.5)
        self.parity_tolerance = check_number("parity_tolerance", parity_tolerance, 0.0, 0.5)
        self.parity_min_obs = int(check_number("parity_min_obs", parity_min_obs, 1, 10_000))

    # -- the guarantee ---------------------------------------------------------

    def plan(
        self,
        candidates: Sequence[Candidate],
        floor: float | None,
        fallback: str,
        *,
        time_sensitive: bool = False,
        memory: TaskMemory = EMPTY_MEMORY,
        task_type: str | None = None,
        complexity: str | None = None,
    ) -> Plan:
        """Enforce the floor, then precompute the concrete policy's route.

        ``task_type`` and ``complexity`` (``low | medium | high`` or None)
        describe the call, for policies that route on them
        (``ComplexityThreshold``); the learned evidence in ``candidates``
        is already that of the call's context cell."""
        cands = sorted(candidates, key=lambda c: c.cost_usd)
        costs = {c.name: c.cost_usd for c in cands}
        considered = [(c.name, c.view.mean, c.view.n, c.cost_usd) for c in cands]
        calibrate: list[tuple[str, int, int]] = []
        if floor is None:
            bar, calibrate = self._parity(cands)
            if bar is None:
                return Plan(
                    floor=None,
                    exploit=None,
                    fallback=fallback,
                    confidence={c.name: 0.0 for c in cands},
                    costs=costs,
                    allowed=frozenset(costs) | {fallback},
                    calibrate=calibrate,
                    considered=considered,
                    notes=["parity: calibrating every candidate before choosing the reference"],
                    calibrating=True,
                )
        else:
            bar = floor
        conf = {c.name: prob_clears(c.view, bar) for c in cands}
        what = "the floor" if floor is not None else "parity with the best"
        dropped: list[Dropped] = []
        survivors: list[Candidate] = []
        notes: list[str] = []
        for c in cands:
            if self._shown_failing(c.view.n, conf[c.name]):
                if c.name != fallback:
                    dropped.append(Dropped(c.name, self._fail_reason(c, bar, what, conf)))
                continue
            survivors.append(c)
        safe = fallback
        fb = next((c for c in cands if c.name == fallback), None)
        if (
            fb is not None
            and fb.view.n >= self.min_fail_obs
            and conf[fallback] <= self.fallback_fails
        ):
            sure = [
                c
                for c in survivors
                if c.name != fallback
                and c.view.n >= self.min_fail_obs
                and conf[c.name] >= self.confidence
            ]
            if sure:
                best = min(sure, key=lambda c: c.cost_usd)
                safe = best.name
                notes.append(
                    f"fallback {fallback} is below {what} ({bar:.2f}): quality "
                    f"{posterior_mean(fb.view):.3f} over {fb.view.n:.0f} calls, "
                    f"P(clears) = {conf[fallback]:.3f}; {best.name} replaces it as the safe "
                    f"model (quality {posterior_mean(best.view):.3f} over "
                    f"{best.view.n:.0f} calls, P(clears) = {conf[best.name]:.3f})"
                )
                survivors = [c for c in survivors if c.name != fallback]
                dropped.append(Dropped(fallback, self._fail_reason(fb, bar, what, conf)))
            else:
                notes.append(
                    f"fallback {fallback} looks below {what} ({bar:.2f}), P(clears) = "
                    f"{conf[fallback]:.3f}, but no other model is shown above it yet"
                )
        plan = self._plan(
            survivors,
            bar,
            safe,
            conf,
            costs,
            memory=memory,
            leader=memory.leader_for(floor),
            time_sensitive=time_sensitive,
            task_type=task_type,
            complexity=complexity,
        )
        allowed = frozenset(c.name for c in survivors) | {safe}
        plan.floor = bar
        plan.fallback = safe
        plan.allowed = allowed
        plan.confidence = conf
        plan.costs = costs
        plan.calibrate = [t for t in calibrate + plan.calibrate if t[0] in allowed]
        plan.explore = [m for m in plan.explore if m in allowed]
        if plan.exploit is not None and plan.exploit not in allowed:
            plan.exploit = None
        plan.dropped = dropped + plan.dropped
        plan.considered = considered
        plan.notes = notes + plan.notes
        return plan

    def pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        """Choose for one call. ``pending`` counts routes whose outcome is not in yet."""
        conf = plan.confidence
        for name, n, target in plan.calibrate:  # cheapest first
            if n + pending.get(name, 0) < target:
                return Choice(name, "calibrate", conf.get(name, 0.0))
        if plan.calibrating:  # every candidate has its calibration calls in flight
            return Choice(plan.fallback, "fallback", conf.get(plan.fallback, 0.0))
        choice = self._pick(plan, uniform, normal, pending)
        if choice.model not in plan.allowed:
            return Choice(plan.fallback, "fallback", conf.get(plan.fallback, 0.0))
        return choice

    def _parity(
        self, cands: Sequence[Candidate]
    ) -> tuple[float | None, list[tuple[str, int, int]]]:
        """The parity bar, or None while the candidates are still being calibrated."""
        short = [
            (c.name, int(c.view.n), self.parity_min_obs)
            for c in cands
            if c.view.n < self.parity_min_obs
        ]
        if short or not cands:
            return None, short
        ref = max(cands, key=lambda c: (posterior_mean(c.view), -c.cost_usd))
        top = posterior_mean(ref.view)
        # Re-check the reference by the others' upper bounds: one whose 95%
        # bound could top it by more than the tolerance (and so move the bar)
        # gets more outcomes, up to twice the minimum.
        recheck = [
            (c.name, int(c.view.n), 2 * self.parity_min_obs)
            for c in cands
            if c is not ref
            and c.view.n < 2 * self.parity_min_obs
            and posterior_mean(c.view) + 1.645 * posterior_sd(c.view) > top + self.parity_tolerance
        ]
        return max(top - self.parity_tolerance, 0.0), recheck

    def _shown_failing(self, n: float, p: float) -> bool:
        """Strong evidence below the bar: ``min_fail_obs`` outcomes and P at
        most ``fail_below``, or overwhelming evidence (P at most its square)
        on 3: a model graded 0.2 three times under a 0.8 floor is not learned
        further, which would otherwise leave it a candidate no draw picks."""
        if n >= self.min_fail_obs:
            return p <= self.fail_below
        return n >= 3 and p <= self.fail_below**2

    @staticmethod
    def _fail_reason(c: Candidate, bar: float, what: str, conf: Mapping[str, float]) -> str:
        return (
            f"below {what} ({bar:.2f}): quality {posterior_mean(c.view):.3f} "
            f"± {posterior_sd(c.view):.3f} over {c.view.n:.0f} calls, "
            f"P(clears) = {conf[c.name]:.4f}"
        )

    # -- what a policy implements ---------------------------------------------

    @abstractmethod
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
        """Plan among ``survivors`` (cheapest first; none is shown below
        ``bar``). ``safe`` is where a call goes when nothing else is chosen;
        ``memory`` is the task type's policy memory, ``leader`` the model this
        floor was last exploited on; ``task_type`` and ``complexity`` the
        call's (None when not known)."""
        raise NotImplementedError("Policy._plan() must be implemented")

    @abstractmethod
    def _pick(
        self,
        plan: Plan,
        uniform: Callable[[], float],
        normal: Callable[[], float],
        pending: Mapping[str, int],
    ) -> Choice:
        """Choose for one call from ``plan``."""
        raise NotImplementedError("Policy._pick() must be implemented")

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        """Arguments that build a valid instance, for the shared policy tests."""
        return {}
