"""The state store interface: a place the bandit's learned state lives.

A store keeps one state per (org, task_type) and applies batches of outcomes
atomically, so concurrent writers (threads, processes, replicas) never lose an
update. The learning arithmetic lives in ``tally_core.learning``; a store only
provides the transaction around it.
"""

from __future__ import annotations

import copy
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tally_core.errors import StoreError
from tally_core.learning import LearnParams, Update, apply_updates

__all__ = [
    "Committed",
    "RolloutChange",
    "StateStore",
    "TaskKey",
    "check_state",
    "copy_state",
    "fold",
    "group_updates",
    "update_clocks",
]

TaskKey = tuple[str, str]  # (org, task_type)


@dataclass(frozen=True)
class Committed:
    """What ``StateStore.apply`` committed.

    ``applied`` is False when the batch id was seen before (nothing was
    folded in again). ``starts`` is each task state's clock just before this
    batch, so ``update_clocks`` tells the clock each outcome landed at, the
    same in every replica of a fleet. ``states`` are the task states the
    batch touched, after it (copies the caller may keep: routing rebuilds its
    snapshot from them without reading the store again); ``version`` is the
    store's version after the batch.
    """

    applied: bool
    starts: Mapping[TaskKey, float] = field(default_factory=dict)
    states: Mapping[TaskKey, dict[str, Any]] = field(default_factory=dict)
    version: int | None = None

    def __bool__(self) -> bool:
        return self.applied


def update_clocks(updates: Sequence[Update], starts: Mapping[TaskKey, float]) -> list[float | None]:
    """The task clock each update landed at (None for a quality replacement,
    which moves no clock), from the clocks before the batch.

    >>> u = Update("o", "t", "*", "m", 1.0, False, None, None, 0.0)
    >>> update_clocks([u, u], {("o", "t"): 5.0})
    [6.0, 7.0]
    """
    running = dict(starts)
    out: list[float | None] = []
    for u in updates:
        if u.replaces is not None:
            out.append(None)
            continue
        k = (u.org, u.task_type)
        c = running.get(k)
        if c is None:
            out.append(None)
            continue
        running[k] = c + 1.0
        out.append(c + 1.0)
    return out


def fold(
    state: dict[str, Any], group: list[Update], params: LearnParams, where: str = ""
) -> float:
    """Apply ``group`` to ``state`` (the shared arithmetic); returns the clock
    before. A damaged state raises ``StoreError`` naming its key (checked
    only when the arithmetic fails, so the hot path pays nothing for it)."""
    try:
        start = float(state["clock"])
        apply_updates(state, group, params)
    except Exception:
        key = (group[0].org, group[0].task_type) if group else ("?", "?")
        check_state(key, state, where)
        raise
    return start


def check_state(key: TaskKey, state: Any, where: str) -> dict[str, Any]:
    """``state`` if it has the shape of a task state, else a ``StoreError``
    naming the key (a damaged or foreign value must not surface as a raw
    ``TypeError`` deep in routing)."""
    problem = _state_problem(state)
    if problem is not None:
        raise StoreError(
            f"state store at {where}: the state of org {key[0]!r}, task type {key[1]!r} "
            f"is damaged ({problem}); reset it with `tally reset --org {key[0]} "
            f"--task-type {key[1]}`"
        )
    return state  # type: ignore[no-any-return]


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a mapping"
    clock = state.get("clock")
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not math.isfinite(clock):
        return f"clock is {type(clock).__name__}, not a number"
    cells = state.get("cells")
    if not isinstance(cells, dict):
        return f"cells is {type(cells).__name__}, not a mapping"
    for cell, arms in cells.items():
        if not isinstance(cell, str) or not isinstance(arms, dict):
            return f"cell {cell!r} is not a mapping of models"
        for model, arm in arms.items():
            if not isinstance(model, str) or not isinstance(arm, list):
                return f"arm {cell!r}/{model!r} is not a list"
            for x in arm:
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    return f"arm {cell!r}/{model!r} holds a {type(x).__name__}"
    return None


def copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a task state, quicker than ``deepcopy`` for its usual shape."""
    out = {k: copy.deepcopy(v) for k, v in state.items() if k not in ("clock", "cells")}
    out["clock"] = state["clock"]
    out["cells"] = {c: {m: list(a) for m, a in arms.items()} for c, arms in state["cells"].items()}
    return out


class StateStore(ABC):
    """Base class for state stores.

    Implement ``apply``, ``load`` and ``version``. ``apply`` must be atomic:
    either the whole batch is folded in and ``batch_id`` remembered (with the
    clocks it started from), or none of it is. A batch id seen before is
    skipped, so replaying a spooled batch after a crash never counts an
    outcome twice, and its ``Committed`` still tells the clocks it landed at.
    ``load`` passes every state through ``check_state``.
    """

    #: Where the ledger and the spool live by default (``None``: in memory).
    directory: str | None = None

    @abstractmethod
    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> Committed:
        """Fold ``updates`` in atomically and say what was committed
        (``Committed.applied`` is False if ``batch_id`` was already applied).

        A store that cannot be reached raises ``StoreError``: the telemetry
        queue then keeps the batch and retries it, in order."""
        raise NotImplementedError("StateStore.apply() must be implemented")

    @abstractmethod
    def load(self, keys: Iterable[TaskKey] | None = None) -> dict[TaskKey, dict[str, Any]]:
        """Task states as plain data (copies the caller may keep): every one,
        or only those in ``keys`` (a key with no state is left out)."""
        raise NotImplementedError("StateStore.load() must be implemented")

    @abstractmethod
    def version(self) -> int:
        """A number that changes whenever any writer changed the state."""
        raise NotImplementedError("StateStore.version() must be implemented")

    def reset(self, org: str | None = None, task_type: str | None = None) -> None:
        """Forget learned state (all of it, or one org / task type)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset")

    # -- rollout state (tally_core.rollout): one JSON-able record per model ------
    #
    # The defaults keep it in this process, so a store written before rollouts
    # lived in the store still works (each process then has its own); the disk
    # and Redis stores share it between processes and replicas.

    def rollout_state(self) -> dict[str, Any]:
        """Every rollout record, by model (copies the caller may keep)."""
        with self._rollout_local() as (records, _):
            return copy.deepcopy(records)

    def update_rollout(self, model: str, change: RolloutChange) -> Any:
        """Replace ``model``'s rollout record with ``change(current)`` atomically
        (``current`` is None when there is none; returning None deletes it) and
        return the new record. ``change`` may run more than once (a store that
        retries on a conflicting write calls it again on what it reads), so it
        must not act beyond computing the record."""
        with self._rollout_local() as (records, bump):
            new = change(copy.deepcopy(records.get(model)))
            if new is None:
                records.pop(model, None)
            else:
                records[model] = copy.deepcopy(new)
            bump()
            return new

    def rollout_version(self) -> int:
        """A number that changes whenever any writer changed a rollout record."""
        with self._rollout_local() as (_, bump):
            return bump(0)

    def _rollout_local(self) -> _LocalRollouts:
        local = self.__dict__.get("_rollouts_here")
        if local is None:
            local = self.__dict__.setdefault("_rollouts_here", _LocalRollouts())
        return local  # type: ignore[no-any-return]

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release resources. Idempotent."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


RolloutChange = Callable[[Any], Any]


class _LocalRollouts:
    """The in-process rollout records of a store that does not share them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, Any] = {}
        self._version = 0

    def _bump(self, by: int = 1) -> int:
        self._version += by
        return self._version

    def __enter__(self) -> tuple[dict[str, Any], Callable[..., int]]:
        self._lock.acquire()
        return self._records, self._bump

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def group_updates(updates: Sequence[Update]) -> dict[TaskKey, list[Update]]:
    """Updates grouped by the task state they touch, order kept."""
    groups: dict[TaskKey, list[Update]] = {}
    for u in updates:
        groups.setdefault((u.org, u.task_type), []).append(u)
    return groups
