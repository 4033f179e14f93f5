"""The state store interface: a place the bandit's learned state lives.

A store keeps one state per (org, task_type) and applies batches of outcomes
atomically, so concurrent writers (threads, processes, replicas) never lose an
update. The learning arithmetic lives in ``tally_core._state``; a store only
provides the transaction around it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from tally_core._state import LearnParams, Update

__all__ = ["StateStore", "TaskKey"]

TaskKey = tuple[str, str]  # (org, task_type)


class StateStore(ABC):
    """Base class for state stores.

    Implement ``apply``, ``load`` and ``version``. ``apply`` must be atomic:
    either the whole batch is folded in and ``batch_id`` remembered, or none
    of it is. A batch id seen before is skipped, so replaying a spooled batch
    after a crash never counts an outcome twice.
    """

    #: Where the ledger and the spool live by default (``None``: in memory).
    directory: str | None = None

    @abstractmethod
    def apply(self, batch_id: str, updates: Sequence[Update], params: LearnParams) -> bool:
        """Fold ``updates`` in atomically; False if ``batch_id`` was already applied."""
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


def group_updates(updates: Sequence[Update]) -> dict[TaskKey, list[Update]]:
    """Updates grouped by the task state they touch, order kept."""
    groups: dict[TaskKey, list[Update]] = {}
    for u in updates:
        groups.setdefault((u.org, u.task_type), []).append(u)
    return groups
