"""Failover: a circuit breaker per model, fed by the errors telemetry reports.

A provider outage shows as errors on every task type at once, so the breaker
looks at a model's calls across all of them (the per-task "erroring" check in
routing still catches a model that fails one kind of call):

- **closed**: calls flow; the last ``window`` outcomes are kept. When at least
  ``min_calls`` of them are known and the error share reaches ``threshold``,
  the circuit **opens**.
- **open**: routing drops the model for ``open_s`` seconds (doubled each time
  it reopens, up to ``max_open_s``); the decision's ``explain()`` says why.
- **half-open**: then a trickle of ``probes`` calls may go to it. The first
  probe outcome that succeeds **closes** the circuit (its window starts
  afresh); one that fails opens it again. While the probes are out and none
  has come back, it counts as open.

Only availability errors count (telemetry with ``success=False`` and an
``error``): a low-quality answer is the bandit's business, not the breaker's.
The state is per process (each replica sees its own calls fail).

>>> b = Breakers(window=10, min_calls=4, threshold=0.5, open_s=30.0)
>>> for ok in (True, False, False, False):
...     _ = b.record("gpt-4o", errored=not ok, now=0.0)
>>> b.state("gpt-4o", now=1.0), b.state("gpt-4o", now=31.0)
('open', 'half-open')
>>> b.allow("gpt-4o", now=31.0), b.allow("gpt-4o", now=31.0)  # one probe by default
(True, False)
>>> _ = b.record("gpt-4o", errored=False, now=32.0)
>>> b.state("gpt-4o", now=32.0)
'closed'
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from tally_core.errors import InvalidFieldError

__all__ = ["Breakers", "State"]

State = Literal["closed", "open", "half-open"]


@dataclass
class _Circuit:
    outcomes: deque[bool] = field(default_factory=deque)  # True: errored
    opened_at: float | None = None
    open_s: float = 0.0
    probes_out: int = 0
    trips: int = 0


class Breakers:
    """The circuits of one ``Tally``'s models (``tally.breakers``); thread-safe.

    Parameters
    ----------
    window
        Recent outcomes per model the error share is computed over.
    min_calls
        Known outcomes needed before the circuit may open.
    threshold
        Error share at which it opens.
    open_s, max_open_s
        How long it stays open at first, and at most (it doubles on reopening).
    probes
        Calls let through while half-open before one comes back.
    """

    def __init__(
        self,
        *,
        window: int = 20,
        min_calls: int = 5,
        threshold: float = 0.5,
        open_s: float = 30.0,
        max_open_s: float = 600.0,
        probes: int = 1,
    ) -> None:
        for name, value, low in (("window", window, 1), ("min_calls", min_calls, 1),
                                 ("probes", probes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidFieldError(f"breaker.{name}", f"must be an integer >= {low}")
        for name, fvalue in (("threshold", threshold), ("open_s", open_s),
                             ("max_open_s", max_open_s)):
            if isinstance(fvalue, bool) or not isinstance(fvalue, (int, float)) or not (
                math.isfinite(fvalue) and fvalue > 0
            ):
                raise InvalidFieldError(f"breaker.{name}", "must be a positive number")
        if threshold > 1:
            raise InvalidFieldError("breaker.threshold", "must be a share in (0, 1]")
        self.window, self.min_calls, self.threshold = window, min_calls, float(threshold)
        self.open_s, self.max_open_s, self.probes = float(open_s), float(max_open_s), probes
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()
        #: Bumped on every state change: routing re-plans when it moves.
        self.epoch = 0
        #: The earliest time an open circuit turns half-open (routing re-plans then).
        self.next_change = math.inf

    def _state(self, c: _Circuit, now: float) -> State:
        if c.opened_at is None:
            return "closed"
        return "open" if now < c.opened_at + c.open_s else "half-open"

    def state(self, model: str, now: float | None = None) -> State:
        c = self._circuits.get(model)
        return "closed" if c is None else self._state(c, time.time() if now is None else now)

    def blocked(self, model: str, now: float | None = None) -> str | None:
        """Why routing must not name ``model`` now, or None (closed, or a probe is free)."""
        c = self._circuits.get(model)
        if c is None or c.opened_at is None:
            return None
        now = time.time() if now is None else now
        if self._state(c, now) == "open":
            left = c.opened_at + c.open_s - now
            return (f"circuit open: {sum(c.outcomes)} of its last {len(c.outcomes)} calls "
                    f"failed; probed again in {left:.0f} s")
        if c.probes_out >= self.probes:
            return "circuit half-open: waiting for its probe call's outcome"
        return None

    def allow(self, model: str, now: float | None = None) -> bool:
        """Count a routed call: False when it must not go (open, or the probes are out)."""
        c = self._circuits.get(model)
        if c is None or c.opened_at is None:
            return True
        now = time.time() if now is None else now
        with self._lock:
            if self._state(c, now) == "open" or c.probes_out >= self.probes:
                return False
            c.probes_out += 1
            if c.probes_out >= self.probes:
                self.epoch += 1  # no more probes: routing drops it until one comes back
            return True

    def record(self, model: str, *, errored: bool, now: float | None = None) -> bool:
        """One outcome; True when the circuit changed state."""
        now = time.time() if now is None else now
        with self._lock:
            c = self._circuits.setdefault(model, _Circuit())
            if c.opened_at is not None:
                if c.probes_out == 0:
                    return False  # a straggler from a call made before it opened
                if errored:
                    c.trips += 1
                    c.open_s = min(self.open_s * 2 ** (c.trips - 1), self.max_open_s)
                    c.opened_at, c.probes_out = now, 0
                else:
                    c.opened_at, c.probes_out, c.trips = None, 0, 0
                    c.outcomes.clear()
                self._changed()
                return True
            c.outcomes.append(errored)
            while len(c.outcomes) > self.window:
                c.outcomes.popleft()
            if len(c.outcomes) >= self.min_calls and (
                sum(c.outcomes) / len(c.outcomes) >= self.threshold
            ):
                c.trips = 1
                c.opened_at, c.open_s, c.probes_out = now, self.open_s, 0
                self._changed()
                return True
            return False

    def tick(self, now: float | None = None) -> bool:
        """Past ``next_change`` an open circuit has turned half-open: True once, so
        routing re-plans (and ``next_change`` moves to the next circuit's)."""
        now = time.time() if now is None else now
        with self._lock:
            if now < self.next_change:
                return False
            later = [c.opened_at + c.open_s for c in self._circuits.values()
                     if c.opened_at is not None and c.opened_at + c.open_s > now]
            self.next_change = min(later) if later else math.inf
            self.epoch += 1
            return True

    def _changed(self) -> None:
        # Lock held.
        self.epoch += 1
        opens = [c.opened_at + c.open_s for c in self._circuits.values()
                 if c.opened_at is not None]
        self.next_change = min(opens) if opens else math.inf
