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

Every advance, completion and rollback is a ``Transition``; the ``Tally``
writes each to the ledger as a typed event (``tally_core.events.RolloutEvent``,
listed by ``tally.rollout_history()`` and ``tally report rollouts``).

The floor holds throughout: routing never hands the candidate a call whose
route drops it (evidence of failing the floor, compliance, an open circuit,
a context window too small).

State lives in the state store (``StateStore.update_rollout``), one record per
model (its spec and every (org, task type)'s progress), so it survives a
restart of a disk store and is shared by every replica on one store, Redis
included. Each batch of outcomes is folded into the record with an atomic
read-modify-write (a transaction, or compare-and-set with a retry), and the
judgement runs inside it: two replicas never lose each other's counts, and a
transition happens once, in the replica whose write made it. Routing reads an
in-memory snapshot (no I/O on the routing path): it is refreshed from every
write this process makes and, for what other replicas wrote, whenever the
store's rollout version moves (``refresh()``: ``Tally`` calls it with its
periodic refresh, and before ``rollout_status``).

>>> r = Rollouts()
>>> _ = r.start("cheap", steps=(0.5, 1.0), min_calls=3, max_quality_drop=0.05)
>>> r.share("default", "qa-simple", "cheap")
0.5
>>> for q in (0.9, 0.9, 0.9):
...     _ = r.observe("default", "qa-simple", "cheap", q)
...     _ = r.observe("default", "qa-simple", "big", 0.92)
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
from typing import TYPE_CHECKING, Any

from tally_core.envelope import parse_task_type
from tally_core.errors import InvalidFieldError, StoreError
from tally_core.events import new_id
from tally_core.home import StoreDir

if TYPE_CHECKING:
    from tally_core.stores.base import StateStore

__all__ = ["Outcome", "RolloutSpec", "Rollouts", "Transition"]

log = logging.getLogger("tally")

#: One graded outcome for the rollouts: (org, task type, model, quality or None).
Outcome = tuple[str, str, str, "float | None"]


@dataclass(frozen=True)
class RolloutSpec:
    model: str
    steps: tuple[float, ...]
    min_calls: int
    max_quality_drop: float
    task_types: tuple[str, ...] | None
    #: Tells this rollout from an earlier one of the same model (a restart of it).
    run_id: str = ""


@dataclass(frozen=True)
class Transition:
    """A rollout moving on: ``action`` is ``advanced``, ``done`` or ``rolled-back``."""

    model: str
    org: str
    task_type: str
    action: str
    step: int  # the step judged (0-based)
    share: float  # that step's share
    calls: int  # the candidate's graded calls at the step
    quality: float  # the candidate's mean quality at the step
    incumbent_quality: float  # the incumbents' mean over the same span
    reason: str


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


def _margin(cell: _Cell) -> float:
    """Half the 95% interval of the quality drop (Welch's t).

    The candidate's spread is taken as at least the incumbents' (same task type,
    same grader): a few equal grades (two 0/1 failures, two close scores) say
    little about its spread, and the normal z on that tiny variance rolled good
    models back after two calls.

    >>> c = _Cell(n=2, s=0.0, ss=0.0, inc_n=100, inc_s=94.0, inc_ss=94.0)
    >>> round(_margin(c), 2)   # two failures against a 94% incumbent: not yet confident
    2.17
    """
    from tally_core.reports import t_quantile  # not at import time: reports is large

    vi = _var(cell.inc_n, cell.inc_s, cell.inc_ss)
    vc = max(_var(cell.n, cell.s, cell.ss), vi)
    a, b = vc / cell.n, vi / cell.inc_n
    if a + b <= 0.0:
        return 0.0
    df = (a + b) ** 2 / (a * a / (cell.n - 1) + b * b / (cell.inc_n - 1))
    return t_quantile(0.975, df) * math.sqrt(a + b)


def _spec_of(raw: Any) -> RolloutSpec:
    return RolloutSpec(str(raw["model"]), tuple(float(x) for x in raw["steps"]),
                       int(raw["min_calls"]), float(raw["max_quality_drop"]),
                       tuple(raw["task_types"]) if raw.get("task_types") else None,
                       str(raw.get("run_id") or ""))


def _record(spec: RolloutSpec, cells: dict[str, _Cell]) -> dict[str, Any]:
    return {"spec": asdict(spec), "cells": {k: asdict(c) for k, c in cells.items()}}


class Rollouts:
    """The rollouts a ``Tally`` runs (``tally.rollouts``); thread-safe.

    ``store`` is where the state lives (a ``MemoryStore`` of its own when
    None). ``legacy_dir``: a directory whose ``rollouts.json`` (the format
    before the store kept rollouts) is imported once into an empty store.
    """

    def __init__(self, store: StateStore | None = None,
                 legacy_dir: str | os.PathLike[str] | None = None) -> None:
        if store is None:
            from tally_core.stores.memory import MemoryStore

            store = MemoryStore()
        self._store = store
        self._specs: dict[str, RolloutSpec] = {}
        self._cells: dict[str, dict[str, _Cell]] = {}
        self._lock = threading.Lock()
        self._seen = -1
        try:
            self._import_legacy(legacy_dir)
            self.refresh(force=True)
        except StoreError as exc:
            log.warning("tally: could not read the rollout state (%s); starting without it",
                        exc)

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
        spec = RolloutSpec(model, got, min_calls, float(max_quality_drop), kinds, new_id("r-"))
        record = _record(spec, {})
        self._store.update_rollout(model, _replace_with(record))
        with self._lock:
            self._specs[model] = spec
            self._cells[model] = {}
        return spec

    def stop(self, model: str) -> bool:
        found: list[bool] = []

        def change(old: Any) -> None:
            found[:] = [old is not None]
            return None

        self._store.update_rollout(model, change)
        with self._lock:
            self._specs.pop(model, None)
            self._cells.pop(model, None)
        return bool(found and found[0])

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
        """A candidate to send this call to instead of ``chosen``, or None (in memory)."""
        for model in list(self._specs):
            if model == chosen:
                continue
            share = self.share(org, task_type, model)
            if share > 0.0 and uniform() < share:
                return model
        return None

    # -- learning ------------------------------------------------------------

    def observe(self, org: str, task_type: str, model: str,
                quality: float | None) -> list[Transition]:
        """One graded outcome of a task type with a rollout (``observe_batch`` of one)."""
        return self.observe_batch([(org, task_type, model, quality)])

    def observe_batch(self, outcomes: Iterable[Outcome]) -> list[Transition]:
        """Fold graded outcomes (the candidate's or an incumbent's) into the store, one
        atomic update per rollout, and judge; returns the transitions this write made.

        A store that cannot be reached loses these counts (logged), never raises."""
        specs = dict(self._specs)
        if not specs:
            return []
        # Per candidate, per org/task: (n, s, ss, inc_n, inc_s, inc_ss) to add.
        deltas: dict[str, dict[str, list[float]]] = {}
        cells_now = self._cells
        for org, task_type, model, quality in outcomes:
            if quality is None:
                continue
            key = f"{org}/{task_type}"
            for cand, spec in specs.items():
                if spec.task_types is not None and task_type not in spec.task_types:
                    continue
                known = cells_now.get(cand, {}).get(key)
                if known is not None and known.status != "running":
                    continue  # judged already: nothing to write
                d = deltas.setdefault(cand, {}).setdefault(key, [0.0] * 6)
                i = 0 if model == cand else 3
                d[i] += 1
                d[i + 1] += quality
                d[i + 2] += quality * quality
        made: list[Transition] = []
        for cand, cells in deltas.items():
            run_id = specs[cand].run_id
            out: list[Transition] = []

            def change(old: Any, cand: str = cand, cells: dict[str, list[float]] = cells,
                       run_id: str = run_id, out: list[Transition] = out) -> Any:
                out.clear()  # a retried update judges afresh
                if old is None:
                    return None  # stopped meanwhile (by another replica)
                spec = _spec_of(old["spec"])
                if spec.run_id != run_id:
                    return old  # restarted meanwhile: these counts belong to the old run
                for key, d in cells.items():
                    raw = old["cells"].get(key)
                    cell = _Cell(**raw) if raw is not None else _Cell()
                    if cell.status != "running":
                        continue
                    cell.n += int(d[0])
                    cell.s += d[1]
                    cell.ss += d[2]
                    cell.inc_n += int(d[3])
                    cell.inc_s += d[4]
                    cell.inc_ss += d[5]
                    t = _judge(cand, spec, key, cell)
                    if t is not None:
                        out.append(t)
                    old["cells"][key] = asdict(cell)
                return old

            try:
                new = self._store.update_rollout(cand, change)
            except StoreError as exc:
                log.warning("tally: rollout counts of %s not recorded: %s", cand, exc)
                continue
            self._take(cand, new)
            for t in out:
                key = f"{t.org}/{t.task_type}"
                if t.action == "rolled-back":
                    log.warning("tally: rollout of %s rolled back for %s: %s", cand, key,
                                t.reason)
                else:
                    log.info("tally: rollout of %s for %s: %s", cand, key, t.reason)
            made.extend(out)
        return made

    def save(self) -> None:
        """Nothing to do: every change is written to the store as it happens (kept for
        callers of the version that saved a file on close)."""

    def status(self, model: str) -> dict[str, dict[str, Any]]:
        """Per ``org/task_type``: step, share, status, calls at the step, history (as the
        store has it now)."""
        try:
            self.refresh()
        except StoreError as exc:
            log.warning("tally: rollout status from this process's snapshot: %s", exc)
        spec = self._specs.get(model)
        if spec is None:
            return {}
        out = {}
        for key, c in self._cells.get(model, {}).items():
            out[key] = {"step": c.step, "share": spec.steps[c.step] if c.status == "running"
                        else (1.0 if c.status == "done" else 0.0),
                        "status": c.status, "calls": c.n, "history": list(c.history)}
        return out

    # -- the snapshot ----------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Reload what other replicas wrote, if the store's rollout version moved
        (one cheap read when it did not); True if it reloaded. ``StoreError`` when
        the store cannot be reached."""
        version = self._store.rollout_version()
        if not force and version == self._seen:
            return False
        records = self._store.rollout_state()
        specs: dict[str, RolloutSpec] = {}
        cells: dict[str, dict[str, _Cell]] = {}
        for model, rec in records.items():
            try:
                specs[model] = _spec_of(rec["spec"])
                cells[model] = {k: _Cell(**c) for k, c in rec["cells"].items()}
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("tally: the rollout state of %s is unreadable (%s); skipped",
                            model, type(exc).__name__)
        with self._lock:
            self._specs, self._cells, self._seen = specs, cells, version
        return True

    def _take(self, model: str, record: Any) -> None:
        """The record this process just wrote, into the snapshot."""
        with self._lock:
            if record is None:
                self._specs.pop(model, None)
                self._cells.pop(model, None)
                return
            try:
                self._specs[model] = _spec_of(record["spec"])
                self._cells[model] = {k: _Cell(**c) for k, c in record["cells"].items()}
            except (KeyError, TypeError, ValueError):
                pass

    def _import_legacy(self, directory: str | os.PathLike[str] | None) -> None:
        if directory is None:
            return
        path = StoreDir(directory).rollouts
        if not path.exists() or self._store.rollout_state():
            return
        try:
            data = json.loads(path.read_text())
            for model, v in data.items():
                spec = _spec_of(v["spec"])
                if not spec.run_id:
                    spec = RolloutSpec(spec.model, spec.steps, spec.min_calls,
                                       spec.max_quality_drop, spec.task_types, new_id("r-"))
                rec = _record(spec, {k: _Cell(**c) for k, c in v["cells"].items()})
                self._store.update_rollout(model, _replace_with(rec))
            os.replace(path, path.with_suffix(".json.imported"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("tally: the rollout state in %s is unreadable (%s); starting without it",
                        path, type(exc).__name__)

    @property
    def models(self) -> list[str]:
        """The models being rolled out."""
        return list(self._specs)


def _replace_with(record: dict[str, Any]) -> Callable[[Any], Any]:
    return lambda _old: record


def _judge(cand: str, spec: RolloutSpec, key: str, cell: _Cell) -> Transition | None:
    if cell.n < 2 or cell.inc_n < 2:
        return None
    mine, theirs = cell.s / cell.n, cell.inc_s / cell.inc_n
    drop = theirs - mine
    share = spec.steps[cell.step]
    org, _, task = key.partition("/")
    if drop - _margin(cell) > spec.max_quality_drop:
        cell.status = "rolled-back"
        reason = (f"rolled back at {share:.0%}: quality {drop:+.3f} below the "
                  f"incumbents' over {cell.n} calls")
        cell.history.append(reason)
        return Transition(cand, org, task, "rolled-back", cell.step, share, cell.n, mine,
                          theirs, reason)
    if cell.n >= spec.min_calls and drop <= spec.max_quality_drop:
        reason = (f"passed {share:.0%} over {cell.n} calls "
                  f"(quality {-drop:+.3f} vs the incumbents)")
        cell.history.append(reason)
        step, n = cell.step, cell.n
        if cell.step + 1 >= len(spec.steps):
            cell.status = "done"
        else:
            cell.step += 1
        # A new step judges the candidate afresh; the incumbents' record runs on (at
        # 100% they get no calls of this task type).
        cell.n, cell.s, cell.ss = 0, 0.0, 0.0
        return Transition(cand, org, task, "done" if cell.status == "done" else "advanced",
                          step, share, n, mine, theirs, reason)
    return None
