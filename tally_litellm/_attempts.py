"""One record per deployment attempt the strategy routed, keyed by LiteLLM call id.

The router's retries and fallbacks call the strategy once per attempt, and
LiteLLM logs each attempt with its own ``litellm_call_id``. The strategy sets
that id before the attempt runs, so the logger finds the exact attempt, and
with it the decision and the model, however late the event arrives and
whoever else shares the request's metadata dict.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tally_core import RouteDecision

__all__ = ["Attempt", "AttemptLog", "RoutedBy"]

RoutedBy = Literal["tally", "fail-open", "litellm"]


@dataclass(slots=True)
class Attempt:
    """What the strategy chose for one attempt, and whether its outcome arrived."""

    call_id: str
    trace_id: str | None
    model_group: str
    deployment_id: str | None
    model: str | None  # pool name of the chosen deployment; None: resolve when served
    routed_by: RoutedBy
    task_type: str
    org: str
    decision: RouteDecision | None = None
    decision_id: str | None = None
    created: float = field(default_factory=time.monotonic)
    reported: bool = False
    finished: bool = False
    # Envelope fields read off the messages (tally_core.infer), for get_decision().
    inferred: tuple[str, ...] = ()
    # The caller's compliance rules (allowed_models / allowed_providers), for shadow copies.
    rules: dict[str, Any] | None = None
    # A grade given before the outcome was reported (a cascade's checks): sent with it.
    quality: float | None = None
    # Names the model a deployment id serves, for attempts LiteLLM placed.
    resolve_name: Callable[[str], str | None] | None = field(default=None, repr=False)
    _info: dict[str, Any] | None = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        """The decision as plain data: request metadata, ``_hidden_params``, headers.

        Built once; each caller gets its own copy to keep.
        """
        if self._info is None:
            self._info = self._build_info()
        return dict(self._info)

    def _build_info(self) -> dict[str, Any]:
        d = self.decision
        return {
            "decision_id": self.decision_id,
            "model": self.model,
            "phase": d.phase if d is not None else None,
            "confidence": round(d.confidence, 6) if d is not None else None,
            "estimated_cost_usd": d.estimated_cost_usd if d is not None else None,
            "task_type": self.task_type,
            "org": self.org,
            "model_group": self.model_group,
            "deployment_id": self.deployment_id,
            "routed_by": self.routed_by,
            "call_id": self.call_id,
            "inferred": list(self.inferred),
        }


class AttemptLog:
    """A bounded, thread-safe map of call id to ``Attempt``.

    Bounded because a stream the caller never finishes is never logged: its
    record must not live forever. Unfinished attempts are also kept apart, so
    waiting for them looks at a handful, not at the whole log.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._items: OrderedDict[str, Attempt] = OrderedDict()
        self._unfinished: dict[int, Attempt] = {}  # by id(): call ids may repeat
        self._cond = threading.Condition()

    def add(self, attempt: Attempt) -> None:
        with self._cond:
            old = self._items.pop(attempt.call_id, None)
            if old is not None:
                self._unfinished.pop(id(old), None)
            self._items[attempt.call_id] = attempt
            self._unfinished[id(attempt)] = attempt
            while len(self._items) > self.max_size:
                _, dropped = self._items.popitem(last=False)
                self._unfinished.pop(id(dropped), None)

    def alias(self, call_id: str, attempt: Attempt) -> None:
        """Find ``attempt`` by another call id too (the one LiteLLM gave its call)."""
        with self._cond:
            self._items[call_id] = attempt
            while len(self._items) > self.max_size:
                _, dropped = self._items.popitem(last=False)
                if dropped is not attempt:
                    self._unfinished.pop(id(dropped), None)

    def get(self, call_id: Any) -> Attempt | None:
        if not isinstance(call_id, str):
            return None
        return self._items.get(call_id)

    def claim(self, call_id: Any) -> Attempt | None:
        """The attempt, marked reported; None if unknown or reported already.

        It still counts as open (``wait`` waits for it) until ``finish``.
        """
        if not isinstance(call_id, str):
            return None
        with self._cond:
            a = self._items.get(call_id)
            if a is None or a.reported:
                return None
            a.reported = True
            return a

    def grade(self, attempt: Attempt, quality: float, timeout: float = 2.0) -> bool:
        """Give the attempt its quality: True when it will travel with the outcome.

        False when the outcome has been reported already: then this waits
        (up to ``timeout``) until that outcome has been handed to Tally, so a
        ``tally.feedback`` sent next cannot overtake it.
        """
        with self._cond:
            if not attempt.reported:
                attempt.quality = quality
                return True
            deadline = time.monotonic() + timeout
            while not attempt.finished and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 0.05))
            return False

    def finish(self, attempt: Attempt) -> None:
        """The claimed attempt's outcome has been handed to Tally (or given up on)."""
        with self._cond:
            attempt.finished = True
            self._unfinished.pop(id(attempt), None)
            self._cond.notify_all()

    @property
    def open(self) -> int:
        """Attempts routed whose outcome has not been logged yet."""
        return len(self._unfinished)

    def open_since(self, since: float) -> int:
        """Attempts routed at or before ``since`` (monotonic) not logged yet."""
        with self._cond:
            return self._open_since(since)

    def _open_since(self, since: float) -> int:
        return sum(1 for a in self._unfinished.values() if a.created <= since)

    def wait(self, since: float, timeout: float | None) -> bool:
        """Wait until every attempt routed up to ``since`` has been logged."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._open_since(since):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.05 if left is None else min(left, 0.05))
        return True
