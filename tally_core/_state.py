"""Learned state: the arithmetic every store applies inside its own transaction.

One ``TaskState`` per (org, task_type)::

    {"clock": 1234.0,                       # outcomes seen for this task type
     "cells": {"*": {model: arm, ...},      # task level
               "json|short|0|n": {...}}}    # finer context cells

An *arm* is a flat list of floats (indices below), so it serialises as JSON
for Redis and pickles small for diskcache. Evidence is discounted lazily: an
arm remembers the clock of its last update and the decay since then is
applied when it is next read or written. Stores own atomicity; this module
owns the maths, so every store learns identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ArmView", "LearnParams", "Update", "apply_updates", "arm_view", "new_task_state"]

# Arm layout.
W, S, S2, T = 0, 1, 2, 3  # slow quality stats, discounted on the task clock
FW, FS, FS2 = 4, 5, 6  # fast quality stats, discounted per own observation
LW, LS = 7, 8  # latency (ms)
OW, OS = 9, 10  # output tokens
CALLS, COST, ERRS = 11, 12, 13  # raw totals, never discounted
EW, ES, TERR = 14, 15, 16  # recent error share (own-observation decay), clock of last error
RESETS, QN = 17, 18  # drift resets, quality observations (raw)
ARM_LEN = 19

TASK_CELL = "*"


@dataclass(frozen=True)
class LearnParams:
    """How evidence is weighed. Shared by every store so they learn alike."""

    half_life: float = 1000.0  # task-type outcomes until old evidence counts half
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


def new_task_state() -> dict[str, Any]:
    return {"clock": 0.0, "cells": {}}


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
    if gap > 0:
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
            arm[W] += 1.0
            arm[S] += q
            arm[S2] += q * q
            arm[FW] = arm[FW] * g_fast + 1.0
            arm[FS] = arm[FS] * g_fast + q
            arm[FS2] = arm[FS2] * g_fast + q * q
            if _drifted(arm, p):
                # The model changed: what it did before no longer predicts it.
                arm[W], arm[S], arm[S2] = arm[FW], arm[FS], arm[FS2]
                arm[RESETS] += 1.0
        if cell == u.cell:  # the task cell itself was the finest cell
            break


def apply_updates(state: dict[str, Any], updates: list[Update], params: LearnParams) -> None:
    """Fold ``updates`` (all for this state's org and task type) into ``state``."""
    for u in updates:
        _apply_one(state, u, params)


@dataclass(frozen=True, slots=True)
class ArmView:
    """An arm as routing reads it, decayed to the task's current clock."""

    n: float  # effective (discounted) quality observations
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
    gap = max(clock - arm[T], 0.0)
    d = 0.5 ** (gap / params.half_life) if gap else 1.0
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
    )
