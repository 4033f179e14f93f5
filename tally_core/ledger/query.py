"""Which calls a reader wants: one query object instead of five filter arguments.

``LedgerQuery`` is what every reader of the ledger (``Ledger.select``,
``count``, ``span``, the reports, export and the dashboard) takes: a time
range (``since`` inclusive, ``until`` exclusive, epoch seconds) and exact
matches on org, task type and model. ``LedgerQuery.parse`` reads the
user's forms (ISO dates, datetimes); the constructor checks the values and
names the bad field.

>>> q = LedgerQuery.parse(since="2025-06-01", until="2025-06-01", org="acme")
>>> q.until - q.since, q.hourly
(86400.0, True)
>>> q.where(mark="%s")
(['ts >= %s', 'ts < %s', 'org = %s'], [1748736000.0, 1748822400.0, 'acme'])
>>> LedgerQuery(since=10.0, until=5.0)
Traceback (most recent call last):
...
tally_core.errors.InvalidFieldError: until: must be after since
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from tally_core._brief import brief
from tally_core.envelope import parse_task_type
from tally_core.errors import InvalidFieldError

__all__ = ["HOUR", "LedgerQuery", "TimeLike", "parse_time"]

#: The roll-ups' time grain (seconds).
HOUR = 3600
TimeLike = str | float | datetime | date | None
_UTC = timezone.utc


def parse_time(value: TimeLike, *, field: str = "since", end: bool = False) -> float | None:
    """Seconds since the epoch for an ISO date or datetime, a ``datetime`` or
    a number. Naive times are UTC. A bare date with ``end=True`` means the end
    of that day (``--until 2025-06-01`` includes the 1st).

    >>> parse_time("1970-01-02"), parse_time("1970-01-01", end=True)
    (86400.0, 86400.0)
    >>> parse_time("1970-01-01T01:00+01:00")
    0.0
    >>> parse_time("yesterday")
    Traceback (most recent call last):
    ...
    tally_core.errors.InvalidFieldError: since: not an ISO date or datetime: 'yesterday' ...
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidFieldError(field, f"must be a date or a time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidFieldError(field, f"must be a finite time, got {value!r}")
        return float(value)
    bare_date = False
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt, bare_date = datetime(value.year, value.month, value.day), True
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            if len(text) == 10:
                d = date.fromisoformat(text)
                dt, bare_date = datetime(d.year, d.month, d.day), True
            else:
                dt = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidFieldError(
                field,
                f"not an ISO date or datetime: {value!r} (e.g. 2025-06-01 or 2025-06-01T14:30)",
            ) from None
    else:
        raise InvalidFieldError(field, f"must be a date or a time, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)
    if bare_date and end:
        dt += timedelta(days=1)
    return dt.timestamp()


def _name(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidFieldError(field, f"must be a non-empty string or None, got {brief(value)}")
    return value


@dataclass(frozen=True)
class LedgerQuery:
    """A slice of the call log: ``since <= ts < until`` and exact matches.

    Every field is optional (None: no condition). Times are epoch seconds;
    ``task_type`` is normalised as the envelope normalises it.
    """

    since: float | None = None
    until: float | None = None
    org: str | None = None
    task_type: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidFieldError(
                    name, f"must be a finite time in epoch seconds or None, got {brief(v)}"
                )
            object.__setattr__(self, name, float(v))
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidFieldError("until", "must be after since")
        object.__setattr__(self, "org", _name("org", self.org))
        object.__setattr__(self, "model", _name("model", self.model))
        if self.task_type is not None:
            object.__setattr__(self, "task_type", parse_task_type(self.task_type))

    @classmethod
    def parse(
        cls,
        *,
        since: TimeLike = None,
        until: TimeLike = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
    ) -> LedgerQuery:
        """A query from the user's forms: ISO dates or datetimes, ``datetime``,
        numbers. A bare date as ``until`` means the end of that day."""
        return cls(
            since=parse_time(since, field="since"),
            until=parse_time(until, field="until", end=True),
            org=org,
            task_type=task_type,
            model=model,
        )

    def replace(self, **changes: Any) -> LedgerQuery:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def hourly(self) -> bool:
        """Whether the time range falls on whole hours (UTC), so the hourly
        roll-ups can answer it."""
        return all(t is None or t % HOUR == 0 for t in (self.since, self.until))

    def where(self, *, mark: str = "?", ts: str = "ts") -> tuple[list[str], list[Any]]:
        """SQL conditions and their arguments (``mark`` is the driver's
        placeholder; ``ts`` the column the time range applies to)."""
        cond: list[str] = []
        args: list[Any] = []
        if self.since is not None:
            cond.append(f"{ts} >= {mark}")
            args.append(self.since)
        if self.until is not None:
            cond.append(f"{ts} < {mark}")
            args.append(self.until)
        for name in ("org", "task_type", "model"):
            value = getattr(self, name)
            if value is not None:
                cond.append(f"{name} = {mark}")
                args.append(value)
        return cond, args

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
