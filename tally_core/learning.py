"""Learned state: the arithmetic every store applies inside its own transaction.

One ``TaskState`` per (org, task_type)::

    {"clock": 1234.0,                       # outcomes seen for this task type
     "cells": {"*": {model: arm, ...},      # task level
               "json|short|0|n": {...}},    # finer context cells
     "policy": {"learn": 140.0,                     # what the policy keeps per task
                "leader": {"0.8": "gpt-4o-mini"}}}

An *arm* is a flat list of floats (indices below), so it serialises as JSON
for Redis and pickles small for diskcache. Evidence is kept, not discounted
on a clock: a model's old outcomes predict it until the drift detector (a
fast window against the long run) says it changed, and then only the fast
window is kept. A finite ``half_life`` still discounts, for those who want
it. The ``policy`` part is the routing policy's own per-task memory, folded
from the phase each outcome's decision carried: its learning calls, and
the model each floor is exploited on (hysteresis); each arm also
counts the calls it took to be learned, so the policy can price the risk
its learning has spent by what it knows now.
Stores own atomicity; this module owns the maths, so every store learns identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EMPTY_VIEW",
    "TASK_CELL",
    "ArmView",
    "LearnParams",
    "TaskMemory",
    "Update",
    "apply_updates",
    "arm_view",
    "EMPTY_MEMORY",
    "floor_key",
    "new_task_state",
    "task_memory",
]

# Arm layout.
W, S, S2, T = 0, 1, 2, 3  # slow quality stats, discounted on the task clock
FW, FS, FS2 = 4, 5, 6  # fast quality stats, discounted per own observation
LW, LS = 7, 8  # latency (ms)
OW, OS = 9, 10  # output tokens
CALLS, COST, ERRS = 11, 12, 13  # raw totals, never discounted
EW, ES, TERR = 14, 15, 16  # recent error share (own-observation decay), clock of last error
RESETS, QN = 17, 18  # drift resets, quality observations (raw)
GRADED = 19  # quality observations strictly between 0 and 1 (raw)
IW, IS = 20, 21  # input tokens
PAID, PCOST = 22, 23  # calls that did not error, and their cost (raw): realised cost per call
RISKY = 24  # calls routed to it to learn it (raw; capped at the fast window on drift)
ARM_LEN = 25

#: Phases of the calls spent learning (on a model not yet proven).
LEARNING_PHASES = ("calibrate", "explore")

TASK_CELL = "*"


@dataclass(frozen=True)
class LearnParams:
    """How evidence is weighed. Shared by every store so they learn alike."""

    half_life: float = math.inf  # task-type outcomes until old evidence counts half
    fast_half_life: float = 25.0  # an arm's own outcomes, for the drift detector
    drift_z: float = 3.5  # fast vs slow mean gap, in standard errors, that resets
    drift_min: float = 10.0  # fast evidence needed before the detector may fire
    error_half_life: float = 5.0  # an arm's own calls, for the error breaker


@dataclass(frozen=True)
class Update:
    """One outcome, as the worker applies it."""

    org: str
    task_type: str
    cell: str
    model: str
    quality: float | None  # None: an availability failure, not a quality signal
    errored: bool
    latency_ms: float | None
    output_tokens: int | None
    cost_usd: float
    # For late feedback: replace a quality applied earlier at clock ``at``.
    replaces: float | None = None
    at: float | None = None
    # A quality that arrives without a call of its own (feedback for a call
    # that had none): it counts as evidence, not as another call.
    outcome_only: bool = False
    input_tokens: int | None = None
    # What the decision behind this call said, for the policy's memory: its
    # phase and its floor (``floor_key``).
    phase: str | None = None
    floor: str | None = None


def floor_key(floor: float | None) -> str:
    """How the policy's memory names a floor: ``"0.8"``, or ``"parity"``.

    >>> floor_key(0.80), floor_key(None)
    ('0.8', 'parity')
    """
    return "parity" if floor is None else f"{round(float(floor), 4):g}"


def new_task_state() -> dict[str, Any]:
    return {"clock": 0.0, "cells": {}, "policy": _new_memory()}


def _new_memory() -> dict[str, Any]:
    return {"learn": 0.0, "leader": {}}


def _remember(state: dict[str, Any], u: Update) -> None:
    """Fold what the decision behind ``u`` did into the policy's memory."""
    if u.phase is None or u.outcome_only:
        return
    mem = state.get("policy")
    if mem is None:
        mem = state["policy"] = _new_memory()
    if u.phase in LEARNING_PHASES:
        mem["learn"] += 1.0
    if u.floor is not None:
        if u.phase == "exploit":
            mem["leader"][u.floor] = u.model
        elif u.phase == "fallback":
            mem["leader"].pop(u.floor, None)


def _arm(cells: dict[str, Any], cell: str, model: str) -> list[float]:
    models = cells.get(cell)
    if models is None:
        models = cells[cell] = {}
    arm = models.get(model)
    if arm is None:
        arm = models[model] = [0.0] * ARM_LEN
    elif len(arm) < ARM_LEN:  # state written by an older version
        arm.extend([0.0] * (ARM_LEN - len(arm)))
    return arm


def _decay(arm: list[float], clock: float, half_life: float) -> None:
    gap = clock - arm[T]
    if gap > 0 and half_life != math.inf:
        d = 0.5 ** (gap / half_life)
        arm[W] *= d
        arm[S] *= d
        arm[S2] *= d
        arm[LW] *= d
        arm[LS] *= d
        arm[OW] *= d
        arm[OS] *= d
    arm[T] = clock


def _drifted(arm: list[float], p: LearnParams) -> bool:
    fw, w = arm[FW], arm[W]
    if fw < p.drift_min or w < fw + p.drift_min:
        return False
    fm, sm = arm[FS] / fw, arm[S] / w
    fv = max(arm[FS2] / fw - fm * fm, 0.0025)
    sv = max(arm[S2] / w - sm * sm, 0.0025)
    return abs(fm - sm) > p.drift_z * math.sqrt(fv / fw + sv / w)


def _apply_one(state: dict[str, Any], u: Update, p: LearnParams) -> None:
    cells = state["cells"]
    if u.replaces is not None:
        # Late feedback: swap the quality recorded earlier, at the weight it
        # has decayed to since, without counting a second outcome.
        if u.quality is None or u.at is None:
            return
        for cell in (TASK_CELL, u.cell):
            arm = _arm(cells, cell, u.model)
            _decay(arm, state["clock"], p.half_life)
            d = 0.5 ** (max(state["clock"] - u.at, 0.0) / p.half_life)
            arm[S] += d * (u.quality - u.replaces)
            arm[S2] += d * (u.quality**2 - u.replaces**2)
            arm[S] = max(arm[S], 0.0)
            arm[S2] = max(arm[S2], 0.0)
            arm[FS] += u.quality - u.replaces
            arm[FS2] += u.quality**2 - u.replaces**2
            arm[FS] = max(arm[FS], 0.0)
            arm[FS2] = max(arm[FS2], 0.0)
            if cell == u.cell:
                break
        return
    state["clock"] += 1.0
    clock = state["clock"]
    g_fast = 0.5 ** (1.0 / p.fast_half_life)
    g_err = 0.5 ** (1.0 / p.error_half_life)
    for cell in (TASK_CELL, u.cell):
        arm = _arm(cells, cell, u.model)
        _decay(arm, clock, p.half_life)
        if not u.outcome_only:
            arm[CALLS] += 1.0
            arm[COST] += u.cost_usd
            if u.phase in LEARNING_PHASES:
                arm[RISKY] += 1.0
            if not u.errored:
                arm[PAID] += 1.0
                arm[PCOST] += u.cost_usd
                if u.input_tokens is not None:
                    arm[IW] += 1.0
                    arm[IS] += u.input_tokens
            arm[EW] = arm[EW] * g_err + 1.0
            arm[ES] = arm[ES] * g_err + (1.0 if u.errored else 0.0)
        if u.errored:
            arm[ERRS] += 1.0
            arm[TERR] = clock
        if u.latency_ms is not None:
            arm[LW] += 1.0
            arm[LS] += u.latency_ms
        if u.output_tokens is not None:
            arm[OW] += 1.0
            arm[OS] += u.output_tokens
        if u.quality is not None:
            q = u.quality
            arm[QN] += 1.0
            if 0.0 < q < 1.0:
                arm[GRADED] += 1.0
            arm[W] += 1.0
            arm[S] += q
            arm[S2] += q * q
            arm[FW] = arm[FW] * g_fast + 1.0
            arm[FS] = arm[FS] * g_fast + q
            arm[FS2] = arm[FS2] * g_fast + q * q
            if _drifted(arm, p):
                # The model changed: what it did before no longer predicts it.
                arm[W], arm[S], arm[S2] = arm[FW], arm[FS], arm[FS2]
                arm[RISKY] = min(arm[RISKY], arm[FW])
                arm[RESETS] += 1.0
        if cell == u.cell:  # the task cell itself was the finest cell
            break
    _remember(state, u)


def apply_updates(state: dict[str, Any], updates: list[Update], params: LearnParams) -> None:
    """Fold ``updates`` (all for this state's org and task type) into ``state``."""
    for u in updates:
        _apply_one(state, u, params)


@dataclass(frozen=True, slots=True)
class ArmView:
    """An arm as routing reads it, decayed to the task's current clock."""

    n: float  # effective quality observations (discounted only with a finite half-life)
    mean: float  # posterior mean quality
    se: float  # posterior standard error of the mean
    latency_ms: float | None
    output_tokens: float | None
    error_share: float  # recent share of calls that errored
    recent_errors: float  # discounted count of recent errors
    since_error: float  # task-type outcomes since the last error (inf: never)
    calls: int
    cost_usd: float
    quality_obs: int
    resets: int
    total: float = 0.0  # sum of the qualities behind ``n`` (successes, for 0/1 outcomes)
    binary: bool = True  # every quality seen was 0 or 1: the posterior is a Beta
    input_tokens: float | None = None
    cost_per_call: float | None = None  # realised: cost of the calls that did not error / them
    paid_calls: int = 0
    risky_calls: float = 0.0  # calls it took in a learning phase (see the module docstring)


# Prior: one pseudo-observation at 0.5 with a wide spread, so a handful of
# perfect scores does not certify a model.
PRIOR_MEAN, PRIOR_N, PRIOR_VAR = 0.5, 1.0, 0.1

EMPTY_VIEW = ArmView(
    n=0.0,
    mean=PRIOR_MEAN,
    se=math.sqrt(PRIOR_VAR / PRIOR_N),
    latency_ms=None,
    output_tokens=None,
    error_share=0.0,
    recent_errors=0.0,
    since_error=math.inf,
    calls=0,
    cost_usd=0.0,
    quality_obs=0,
    resets=0,
)


def arm_view(arm: list[float], clock: float, params: LearnParams) -> ArmView:
    if len(arm) < ARM_LEN:  # state written by an older version
        arm = [*arm, *([0.0] * (ARM_LEN - len(arm)))]
    gap = max(clock - arm[T], 0.0)
    d = 0.5 ** (gap / params.half_life) if gap and params.half_life != math.inf else 1.0
    n, s, s2 = arm[W] * d, arm[S] * d, arm[S2] * d
    mean = (s + PRIOR_N * PRIOR_MEAN) / (n + PRIOR_N)
    emp = s / n if n > 0 else PRIOR_MEAN
    ss = max(s2 - n * emp * emp, 0.0)
    var = (ss + PRIOR_N * PRIOR_VAR) / (n + PRIOR_N)
    se = math.sqrt(var / (n + PRIOR_N))
    return ArmView(
        n=n,
        mean=mean,
        se=se,
        latency_ms=arm[LS] / arm[LW] if arm[LW] > 0 else None,
        output_tokens=arm[OS] / arm[OW] if arm[OW] > 0 else None,
        error_share=arm[ES] / arm[EW] if arm[EW] > 0 else 0.0,
        recent_errors=arm[ES],
        since_error=clock - arm[TERR] if arm[ERRS] > 0 else math.inf,
        calls=int(arm[CALLS]),
        cost_usd=arm[COST],
        quality_obs=int(arm[QN]),
        resets=int(arm[RESETS]),
        total=s,
        binary=arm[GRADED] == 0.0,
        input_tokens=arm[IS] / arm[IW] if arm[IW] > 0 else None,
        cost_per_call=arm[PCOST] / arm[PAID] if arm[PAID] > 0 else None,
        paid_calls=int(arm[PAID]),
        risky_calls=arm[RISKY],
    )


@dataclass(frozen=True, slots=True)
class TaskMemory:
    """The routing policy's memory of one task type (see the module docstring)."""

    clock: float = 0.0  # outcomes of the task type
    learn: float = 0.0  # calls spent learning (calibrate and explore phases)
    leader: tuple[tuple[str, str], ...] = ()  # (floor_key, model) exploited last

    def leader_for(self, floor: float | None) -> str | None:
        key = floor_key(floor)
        return next((m for k, m in self.leader if k == key), None)


EMPTY_MEMORY = TaskMemory()


def task_memory(state: dict[str, Any]) -> TaskMemory:
    """The policy's memory in a task state, as routing reads it."""
    mem = state.get("policy") or {}
    return TaskMemory(
        clock=float(state.get("clock", 0.0)),
        learn=float(mem.get("learn", 0.0)),
        leader=tuple(sorted((mem.get("leader") or {}).items())),
    )
