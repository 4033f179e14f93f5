"""Gradual rollout: a new model takes a growing share of calls, and rolls itself back.

``tally.rollout("gpt-4.1-mini", steps=(0.01, 0.05, 0.25, 0.5, 1.0), min_calls=200,
max_quality_drop=0.02)`` sends that share of each eligible task type's calls
to the candidate instead of the model the policy chose (the incumbent), one
step at a time, per (org, task type):

- once the candidate has ``min_calls`` graded outcomes at the step, it
  **advances** when its mean quality is no more than ``max_quality_drop``
  below the incumbents' over the same step;
- it **rolls back** (the share drops to 0 for that task type, logged, and
  ``rollout_status`` says so) as soon as the evidence is confident (a 95%
  interval) that it is worse by more than that, at any point of a step;
- after the last step it is **done**: the policy's own learning decides from
  then on (its outcomes are evidence like any other).

The floor holds throughout: routing never hands the candidate a call whose
route drops it (evidence of failing the floor, compliance, an open circuit,
a context window too small). State lives in the store's directory
(``rollouts.json``) when the store has one, so a restart picks it up and
processes on one disk store share it (re-read when the file changes): steps
and statuses are written when they change, the counts within a step when the
Tally closes. With a memory or Redis store it lives in the process.

>>> r = Rollouts()
>>> _ = r.start("cheap", steps=(0.5, 1.0), min_calls=3, max_quality_drop=0.05)
>>> r.share("default", "qa-simple", "cheap")
0.5
>>> for q in (0.9, 0.9, 0.9):
...     r.observe("default", "qa-simple", "cheap", q)
...     r.observe("default", "qa-simple", "big", 0.92)
>>> r.status("cheap")["default/qa-simple"]["step"]   # advanced to 100%
1
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tally_core.envelope import parse_task_type
from tally_core.errors import InvalidFieldError
from tally_core.home import StoreDir

__all__ = ["RolloutSpec", "Rollouts"]

log = logging.getLogger("tally")


@dataclass(frozen=True)
class RolloutSpec:
    model: str
    steps: tuple[float, ...]
    min_calls: int
    max_quality_drop: float
    task_types: tuple[str, ...] | None


@dataclass
class _Cell:
    """One (org, task type)'s progress."""

    step: int = 0
    status: str = "running"  # running | done | rolled-back
    n: int = 0
    s: float = 0.0
    ss: float = 0.0
    inc_n: int = 0
    inc_s: float = 0.0
    inc_ss: float = 0.0
    history: list[str] = field(default_factory=list)


def _var(n: int, s: float, ss: float) -> float:
    return max(ss - s * s / n, 0.0) / (n - 1) if n > 1 else 0.25


class Rollouts:
    """The rollouts a ``Tally`` runs (``tally.rollouts``); thread-safe."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._path = StoreDir(directory).rollouts if directory is not None else None
        self._specs: dict[str, RolloutSpec] = {}
        self._cells: dict[str, dict[str, _Cell]] = {}
        self._lock = threading.Lock()
        self._mtime = 0.0
        self._load()

    def __bool__(self) -> bool:
        return bool(self._specs)

    # -- setup ---------------------------------------------------------------

    def start(
        self,
        model: str,
        *,
        steps: Iterable[float] = (0.01, 0.05, 0.25, 0.5, 1.0),
        min_calls: int = 200,
        max_quality_drop: float = 0.02,
        task_types: Iterable[str] | None = None,
    ) -> RolloutSpec:
        if not isinstance(model, str) or not model:
            raise InvalidFieldError("model", "must be a model name")
        got = tuple(float(x) for x in steps)
        if not got or any(not (0.0 < x <= 1.0) or not math.isfinite(x) for x in got) or list(
            got
        ) != sorted(got):
            raise InvalidFieldError("steps", "must be increasing shares in (0, 1]")
        if isinstance(min_calls, bool) or not isinstance(min_calls, int) or min_calls < 2:
            raise InvalidFieldError("min_calls", "must be an integer >= 2")
        if isinstance(max_quality_drop, bool) or not isinstance(max_quality_drop, (int, float)) \
                or not (0.0 <= max_quality_drop < 1.0):
            raise InvalidFieldError("max_quality_drop", "must be in [0, 1)")
        kinds = (tuple(sorted({parse_task_type(t) for t in task_types}))
                 if task_types is not None else None)
        spec = RolloutSpec(model, got, min_calls, float(max_quality_drop), kinds)
        with self._lock:
            self._specs[model] = spec
            self._cells[model] = {}
            self._save()
        return spec

    def stop(self, model: str) -> bool:
        with self._lock:
            found = self._specs.pop(model, None) is not None
            self._cells.pop(model, None)
            if found:
                self._save()
            return found

    # -- routing -------------------------------------------------------------

    def share(self, org: str, task_type: str, model: str) -> float:
        """The share of this task type's calls ``model`` gets now (0 if none)."""
        spec = self._specs.get(model)
        if spec is None or (spec.task_types is not None and task_type not in spec.task_types):
            return 0.0
        cell = self._cells.get(model, {}).get(f"{org}/{task_type}")
        if cell is None:
            return spec.steps[0]
        if cell.status != "running":
            return 0.0
        return spec.steps[cell.step]

    def draw(
        self, org: str, task_type: str, chosen: str, uniform: Callable[[], float]
    ) -> str | None:
        """A candidate to send this call to instead of ``chosen``, or None."""
        self._refresh()
        for model in list(self._specs):
            if model == chosen:
                continue
            share = self.share(org, task_type, model)
            if share > 0.0 and uniform() < share:
                return model
        return None

    # -- learning ------------------------------------------------------------

    def observe(self, org: str, task_type: str, model: str, quality: float | None) -> None:
        """One graded outcome of a task type with a rollout: the candidate's or an incumbent's."""
        if quality is None or not self._specs:
            return
        with self._lock:
            changed = False
            for cand, spec in self._specs.items():
                if spec.task_types is not None and task_type not in spec.task_types:
                    continue
                key = f"{org}/{task_type}"
                cell = self._cells.setdefault(cand, {}).setdefault(key, _Cell())
                if cell.status != "running":
                    continue
                if model == cand:
                    cell.n, cell.s, cell.ss = cell.n + 1, cell.s + quality, cell.ss + quality ** 2
                else:
                    cell.inc_n += 1
                    cell.inc_s += quality
                    cell.inc_ss += quality ** 2
                changed = self._judge(cand, spec, key, cell) or changed
            if changed:
                self._save()

    def _judge(self, cand: str, spec: RolloutSpec, key: str, cell: _Cell) -> bool:
        if cell.n < 2 or cell.inc_n < 2:
            return False
        drop = cell.inc_s / cell.inc_n - cell.s / cell.n
        se = math.sqrt(_var(cell.n, cell.s, cell.ss) / cell.n
                       + _var(cell.inc_n, cell.inc_s, cell.inc_ss) / cell.inc_n)
        share = spec.steps[cell.step]
        if drop - 1.96 * se > spec.max_quality_drop:
            cell.status = "rolled-back"
            cell.history.append(f"rolled back at {share:.0%}: quality {drop:+.3f} below the "
                                f"incumbents' over {cell.n} calls")
            log.warning("tally: rollout of %s rolled back for %s: %s", cand, key,
                        cell.history[-1])
            return True
        if cell.n >= spec.min_calls and drop <= spec.max_quality_drop:
            cell.history.append(f"passed {share:.0%} over {cell.n} calls "
                                f"(quality {-drop:+.3f} vs the incumbents)")
            if cell.step + 1 >= len(spec.steps):
                cell.status = "done"
            else:
                cell.step += 1
            # A new step judges the candidate afresh; the incumbents' record runs on (at
            # 100% they get no calls of this task type).
            cell.n, cell.s, cell.ss = 0, 0.0, 0.0
            log.info("tally: rollout of %s for %s: %s", cand, key, cell.history[-1])
            return True
        return False

    def save(self) -> None:
        """Write the state now (``Tally.close`` does): steps and statuses are written on
        every change, the counts within a step only here."""
        with self._lock:
            self._save()

    def status(self, model: str) -> dict[str, dict[str, Any]]:
        """Per ``org/task_type``: step, share, status, calls at the step, history."""
        self._refresh()
        spec = self._specs.get(model)
        if spec is None:
            return {}
        out = {}
        for key, c in self._cells.get(model, {}).items():
            out[key] = {"step": c.step, "share": spec.steps[c.step] if c.status == "running"
                        else (1.0 if c.status == "done" else 0.0),
                        "status": c.status, "calls": c.n, "history": list(c.history)}
        return out

    # -- persistence -----------------------------------------------------------

    def _save(self) -> None:
        # Lock held.
        if self._path is None:
            return
        data = {m: {"spec": asdict(s), "cells": {k: asdict(c) for k, c in
                                                 self._cells.get(m, {}).items()}}
                for m, s in self._specs.items()}
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._path)
            self._mtime = self._path.stat().st_mtime
        except OSError:
            log.warning("tally: could not save the rollout state", exc_info=True)

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text())
            specs, cells = {}, {}
            for m, v in data.items():
                s = v["spec"]
                specs[m] = RolloutSpec(s["model"], tuple(s["steps"]), int(s["min_calls"]),
                                       float(s["max_quality_drop"]),
                                       tuple(s["task_types"]) if s["task_types"] else None)
                cells[m] = {k: _Cell(**c) for k, c in v["cells"].items()}
            self._specs, self._cells = specs, cells
            self._mtime = self._path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("tally: the rollout state in %s is unreadable (%s); starting without it",
                        self._path, type(exc).__name__)

    def _refresh(self) -> None:
        """Pick up what another process on the same store wrote (cheap: a stat)."""
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            with self._lock:
                self._load()

    @property
    def models(self) -> list[str]:
        """The models being rolled out."""
        return list(self._specs)
