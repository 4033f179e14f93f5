"""Reports over the ledger: cost and quality roll-ups, the savings proof, export.

Every function reads a ``Ledger`` and returns plain data (dataclasses with a
``to_dict()``), so the same figures feed the ``tally`` command, a notebook or
a web page. Time buckets are in UTC.

>>> from tally_core.ledger import Ledger
>>> led = Ledger(":memory:")
>>> _ = led.append([
...     {"event_id": "e1", "ts": 0.0, "org": "acme", "task_type": "qa-simple",
...      "model": "gpt-4o-mini", "cost_usd": 0.001, "quality": 0.9, "latency_ms": 500.0},
...     {"event_id": "e2", "ts": 60.0, "org": "acme", "task_type": "qa-simple",
...      "model": "gpt-4o", "cost_usd": 0.01, "quality": 1.0, "latency_ms": 900.0}])
>>> r = report(led, by="day")
>>> r.totals.calls, round(r.totals.cost_usd, 3), r.totals.latency_p50_ms
(2, 0.011, 700.0)
>>> [m.key for m in r.by_model]
['gpt-4o', 'gpt-4o-mini']
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
import statistics
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal

from tally_core.catalog import (
    PRICE_MAP_URL,
    STORE_PRICE_MAP,
    fetch_price_map,
    load_price_map,
    parse_price_map,
    save_price_map,
)
from tally_core.errors import InvalidFieldError, UnknownModelError
from tally_core.ledger import COLUMNS, Ledger, PriceRecord
from tally_core.ledger._rollups import REPORT, percentile
from tally_core.ledger.query import HOUR, LedgerQuery, TimeLike, parse_time

__all__ = [
    "csv_text",
    "EXPORT_FORMATS",
    "TIME_BUCKETS",
    "ROLLUPS_ABOVE",
    "SOURCES",
    "HoldoutComparison",
    "LedgerQuery",
    "PriceRow",
    "Report",
    "Rollup",
    "Savings",
    "TaskSavings",
    "export",
    "parse_time",
    "pricing",
    "read_export",
    "refresh_prices",
    "report",
    "savings",
    "task_mix",
    "t_quantile",
]

TimeBucket = Literal["auto", "day", "hour", "minute"]
Source = Literal["auto", "rollups", "rows"]
#: Where a report reads from: the roll-ups when they can answer (auto), or
#: one of them by force (tests and benchmarks compare the two).
SOURCES: tuple[str, ...] = ("auto", "rollups", "rows")
#: ``source="auto"`` reads the rows of a slice up to this many calls (fast
#: enough, and latency percentiles exact), the roll-ups above.
ROLLUPS_ABOVE = 20_000
ExportFormat = Literal["csv", "json", "jsonl"]
TIME_BUCKETS: tuple[str, ...] = ("auto", "day", "hour", "minute")
EXPORT_FORMATS: tuple[str, ...] = ("csv", "json", "jsonl")

_UTC = timezone.utc
_UNITS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
_LABELS = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}
_SPLIT = 12  # buckets when the whole range is shorter than a few minutes
_MAX_BUCKETS = 60


# -- time ---------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, _UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class _Buckets:
    unit: str  # minute, hour, day, or "split" (equal slices of a short range)
    origin: float
    width: float

    @classmethod
    def choose(cls, by: str, lo: float | None, hi: float | None) -> _Buckets:
        if by not in TIME_BUCKETS:
            raise InvalidFieldError("by", f"must be one of {', '.join(TIME_BUCKETS)}, got {by!r}")
        if by != "auto":
            return cls(by, 0.0, _UNITS[by])
        if lo is None or hi is None:
            return cls("day", 0.0, _UNITS["day"])
        if hi - lo < 4 * _UNITS["minute"]:
            return cls("split", lo, max((hi - lo) / _SPLIT, 1e-3))
        for unit, w in _UNITS.items():
            if math.floor(hi / w) - math.floor(lo / w) + 1 <= _MAX_BUCKETS:
                return cls(unit, 0.0, w)
        return cls("day", 0.0, _UNITS["day"])

    def start(self, ts: float) -> float:
        k = math.floor((ts - self.origin) / self.width)
        if self.unit == "split":
            k = min(max(k, 0), _SPLIT - 1)
        return self.origin + k * self.width

    def label(self, start: float) -> str:
        dt = datetime.fromtimestamp(start, _UTC)
        if self.unit == "split":
            return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-4]
        return dt.strftime(_LABELS[self.unit])


# -- the report ---------------------------------------------------------------


@dataclass
class Rollup:
    """One group's figures. ``key`` is the model, org, task type or time bucket."""

    key: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_share: float
    errors: int
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    quality_obs: int
    mean_quality: float | None
    start: float | None = None  # time buckets: the bucket's first second (epoch)


_AT = {name: i for i, name in enumerate(REPORT)}
_L0 = _AT["l0"]
_LN = _L0 + sum(1 for c in REPORT if c.startswith("l") and c[1:].isdigit())


class _Acc:
    __slots__ = ("calls", "cost", "errors", "itok", "lat", "lat_hi", "lat_lo", "lat_n", "otok",
                 "qn", "qsum", "sketch_rows", "sketches")

    def __init__(self) -> None:
        self.calls = self.itok = self.otok = self.errors = self.qn = 0
        self.cost = self.qsum = 0.0
        self.lat = array("d")  # rows: every latency
        # roll-ups: which rows of ``sketches`` (a matrix of latency sketches,
        # see ``tally_core.ledger._rollups``) to sum
        self.sketch_rows: list[int] = []
        self.sketches: Any = None
        self.lat_n = 0
        self.lat_lo: float | None = None
        self.lat_hi: float | None = None

    def merge(self, v: Sequence[Any], at: int, sketches: Any) -> None:
        """Add one roll-up row's figures (``REPORT`` order), its sketch row ``at``."""
        self.calls += v[_AT["calls"]]
        self.itok += v[_AT["input_tokens"]]
        self.otok += v[_AT["output_tokens"]]
        self.cost += v[_AT["cost_usd"]]
        self.errors += v[_AT["errors"]]
        self.qn += v[_AT["quality_obs"]]
        self.qsum += v[_AT["quality_sum"]]
        n = v[_AT["lat_n"]]
        if not n:
            return
        self.lat_n += n
        self.sketch_rows.append(at)
        self.sketches = sketches
        lo, hi = v[_AT["lat_min"]], v[_AT["lat_max"]]
        self.lat_lo = lo if self.lat_lo is None else min(self.lat_lo, lo)
        self.lat_hi = hi if self.lat_hi is None else max(self.lat_hi, hi)

    def add(
        self,
        it: int | None,
        ot: int | None,
        cost: float | None,
        error: str | None,
        q: float | None,
        lat: float | None,
    ) -> None:
        self.calls += 1
        self.itok += it or 0
        self.otok += ot or 0
        self.cost += cost or 0.0
        if error is not None:
            self.errors += 1
        if q is not None:
            self.qn += 1
            self.qsum += q
        if lat is not None:
            self.lat.append(lat)

    def rollup(self, key: str, total_cost: float, start: float | None = None) -> Rollup:
        p50 = p95 = None
        if self.lat:
            import numpy as np  # not at import time: `import tally_core` stays fast

            p50, p95 = (float(x) for x in np.percentile(np.frombuffer(self.lat), [50, 95]))
        elif self.lat_n:
            cum = self.sketches[self.sketch_rows].sum(axis=0).tolist()
            p50, p95 = (percentile(cum, self.lat_n, self.lat_lo, self.lat_hi, q) for q in (50, 95))
        return Rollup(
            key=key,
            calls=self.calls,
            input_tokens=self.itok,
            output_tokens=self.otok,
            cost_usd=self.cost,
            cost_share=self.cost / total_cost if total_cost > 0 else 0.0,
            errors=self.errors,
            error_rate=self.errors / self.calls if self.calls else 0.0,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            quality_obs=self.qn,
            mean_quality=self.qsum / self.qn if self.qn else None,
            start=start,
        )


@dataclass
class Report:
    """Cost, volume, latency, errors and quality for a slice of the ledger.

    ``quality`` is per (task type, model) over the whole slice;
    ``quality_history`` the same per time bucket; ``mix`` the calls per
    model in each time bucket (the model distribution over time);
    ``task_mix`` the calls per task type whose task type an adapter
    inferred from the messages and those it was given for (what the
    workload is made of before anyone labels it). ``source`` says whether
    the figures came from the hourly roll-ups or the rows.
    """

    since: float | None
    until: float | None
    filters: dict[str, str | None]
    bucket: str
    totals: Rollup
    first_ts: float | None = None
    last_ts: float | None = None
    by_model: list[Rollup] = field(default_factory=list)
    by_org: list[Rollup] = field(default_factory=list)
    by_task_type: list[Rollup] = field(default_factory=list)
    by_time: list[Rollup] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    quality_history: list[dict[str, Any]] = field(default_factory=list)
    mix: list[dict[str, Any]] = field(default_factory=list)
    task_mix: list[dict[str, Any]] = field(default_factory=list)
    source: str = "rows"

    @property
    def empty(self) -> bool:
        return self.totals.calls == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REPORT_COLS = (
    "ts",
    "org",
    "task_type",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "error",
    "quality",
    "latency_ms",
)


def _query(
    query: LedgerQuery | None,
    since: TimeLike,
    until: TimeLike,
    org: str | None,
    task_type: str | None,
    model: str | None,
) -> LedgerQuery:
    """The query, from a ``LedgerQuery`` or the keyword filters (not both)."""
    if query is None:
        return LedgerQuery.parse(
            since=since, until=until, org=org, task_type=task_type, model=model
        )
    if not isinstance(query, LedgerQuery):
        raise InvalidFieldError("query", f"must be a LedgerQuery, got {type(query).__name__}")
    if any(v is not None for v in (since, until, org, task_type, model)):
        raise InvalidFieldError("query", "give a LedgerQuery or the filter keywords, not both")
    return query


def _source(source: str) -> str:
    if source not in SOURCES:
        raise InvalidFieldError("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def report(
    ledger: Ledger,
    query: LedgerQuery | None = None,
    *,
    since: TimeLike = None,
    until: TimeLike = None,
    org: str | None = None,
    task_type: str | None = None,
    model: str | None = None,
    by: TimeBucket = "auto",
    source: Source = "auto",
) -> Report:
    """Roll the ledger up by model, org, task type and time.

    The slice is ``query`` or the keyword filters: ``since`` is inclusive,
    ``until`` exclusive (a bare date: the end of that day). ``by`` sizes
    the time buckets: ``day``, ``hour``, ``minute``, or ``auto`` (the finest
    of those giving at most 60 buckets; a range shorter than four minutes
    is cut into 12 equal slices). An error is a call reported with an
    ``error``; quality means are over calls with a quality.

    Read from the hourly roll-ups (``source="auto"``, for a slice of more
    than ``ROLLUPS_ABOVE`` calls; a smaller one reads its rows) when they can
    answer: the time range is on whole hours (UTC) or open, and the buckets
    are hours or days. Minute buckets, the slices of a short range, a range that
    starts or ends inside an hour and an older ledger opened read-only
    without roll-ups read the rows. Both give the same counts, tokens,
    costs, errors and quality; latency percentiles from the roll-ups are
    read from a log-scale sketch (within its 19% buckets of the exact
    value, usually within a few percent), from rows they are exact
    (``numpy.percentile``'s linear interpolation). ``source="rows"`` or
    ``"rollups"`` forces one (the latter raises ``InvalidFieldError`` when
    the roll-ups cannot answer).
    """
    q = _query(query, since, until, org, task_type, model)
    _source(source)
    n, lo, hi = ledger.span(q)
    buckets = _Buckets.choose(by, lo, hi)
    answerable = ledger.uses_rollups(q) and buckets.unit in ("hour", "day")
    if source == "rollups" and not answerable:
        raise InvalidFieldError(
            "source",
            "the roll-ups answer hour or day buckets over whole hours of a ledger that keeps "
            "them; read the rows for this report",
        )
    use = answerable and (source == "rollups" or (source == "auto" and n > ROLLUPS_ABOVE))
    total = _Acc()
    groups: dict[str, dict[str, _Acc]] = {"model": {}, "org": {}, "task_type": {}}
    times: dict[float, _Acc] = {}
    quality: dict[tuple[str, str], _Acc] = {}
    history: dict[tuple[str, str, float], list[float]] = {}  # calls, quality obs, sum
    mix: dict[float, dict[str, int]] = {}

    def acc_of(d: dict[Any, _Acc], key: Any) -> _Acc:
        acc = d.get(key)
        if acc is None:
            acc = d[key] = _Acc()
        return acc

    if n and use:
        import numpy as np

        got = ledger.report_rollup(q, int(buckets.width))
        sketches = np.array([r[4 + _L0 : 4 + _LN] for r in got], dtype=np.int64)
        for at, (b, o, tt, m, *vals) in enumerate(got):
            start = float(b)
            for acc in (total, acc_of(groups["model"], m), acc_of(groups["org"], o),
                        acc_of(groups["task_type"], tt), acc_of(times, start),
                        acc_of(quality, (tt, m))):
                acc.merge(vals, at, sketches)
            h = history.setdefault((tt, m, start), [0, 0, 0.0])
            h[0] += vals[_AT["calls"]]
            h[1] += vals[_AT["quality_obs"]]
            h[2] += vals[_AT["quality_sum"]]
            bucket_mix = mix.setdefault(start, {})
            bucket_mix[m] = bucket_mix.get(m, 0) + vals[_AT["calls"]]
    elif n:
        for ts, o, tt, m, it, ot, cost, err, qv, lat in ledger.select(_REPORT_COLS, q):
            total.add(it, ot, cost, err, qv, lat)
            for name, key in (("model", m), ("org", o), ("task_type", tt)):
                acc_of(groups[name], key).add(it, ot, cost, err, qv, lat)
            start = buckets.start(ts)
            acc_of(times, start).add(it, ot, cost, err, qv, lat)
            acc_of(quality, (tt, m)).add(it, ot, cost, err, qv, None)
            h = history.setdefault((tt, m, start), [0, 0, 0.0])
            h[0] += 1
            if qv is not None:
                h[1] += 1
                h[2] += qv
            bucket_mix = mix.setdefault(start, {})
            bucket_mix[m] = bucket_mix.get(m, 0) + 1
    tc = total.cost

    def ranked(accs: dict[str, _Acc]) -> list[Rollup]:
        out = [a.rollup(k, tc) for k, a in accs.items()]
        out.sort(key=lambda r: (-r.cost_usd, -r.calls, r.key))
        return out

    return Report(
        since=q.since,
        until=q.until,
        filters={"org": q.org, "task_type": q.task_type, "model": q.model},
        bucket=buckets.unit,
        totals=total.rollup("total", tc),
        first_ts=lo,
        last_ts=hi,
        by_model=ranked(groups["model"]),
        by_org=ranked(groups["org"]),
        by_task_type=ranked(groups["task_type"]),
        by_time=[times[s].rollup(buckets.label(s), tc, s) for s in sorted(times)],
        quality=[
            {
                "task_type": tt,
                "model": m,
                "calls": a.calls,
                "quality_obs": a.qn,
                "mean_quality": a.qsum / a.qn if a.qn else None,
                "cost_usd": a.cost,
            }
            for (tt, m), a in sorted(quality.items())
        ],
        quality_history=[
            {
                "task_type": tt,
                "model": m,
                "bucket": buckets.label(s),
                "start": s,
                "calls": int(h[0]),
                "quality_obs": int(h[1]),
                "mean_quality": h[2] / h[1] if h[1] else None,
            }
            for (tt, m, s), h in sorted(history.items())
        ],
        mix=[
            {
                "bucket": buckets.label(s),
                "start": s,
                "calls": sum(mix[s].values()),
                "models": dict(sorted(mix[s].items())),
            }
            for s in sorted(mix)
        ],
        task_mix=task_mix(ledger, q) if n else [],
        source="rollups" if use else "rows",
    )


def task_mix(ledger: Ledger, query: LedgerQuery | None = None) -> list[dict[str, Any]]:
    """Calls per task type, split by whether an adapter inferred the task type
    from the messages (``tally_core.infer``) or the caller gave it; most
    calls first.

    >>> from tally_core.ledger import Ledger
    >>> led = Ledger(":memory:")
    >>> _ = led.append([{"event_id": f"e{i}", "ts": 1.0, "org": "o", "task_type": "translation",
    ...                  "model": "m", "inferred": "task_type" if i else None} for i in range(3)])
    >>> [(r["task_type"], r["inferred"], r["given"]) for r in task_mix(led)]
    [('translation', 2, 1)]
    """
    counts = sorted(ledger.task_mix(query), key=lambda r: (-(r[1] + r[2]), r[0]))
    return [
        {"task_type": tt, "calls": a + g, "inferred": a, "given": g,
         "inferred_share": a / (a + g) if a + g else 0.0}
        for tt, a, g in counts
    ]


# -- savings ------------------------------------------------------------------


@dataclass
class HoldoutComparison:
    """Quality of routed calls minus quality of holdout calls (sent to the
    fallback at random, ``Tally(holdout=...)``), with a confidence interval.

    ``diff`` near 0 (an interval holding 0) means routing kept the premium
    model's quality; a negative ``ci_high`` means it measurably cost quality.
    """

    routed_calls: int
    holdout_calls: int
    routed_quality: float | None
    holdout_quality: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    df: float | None
    confidence: float
    method: str


@dataclass
class TaskSavings:
    """One task type's savings and quality comparison.

    ``parity_model`` is the cheapest model whose mean quality on this task
    stayed within the tolerance of the fallback's; ``parity_share`` the share
    of the task's calls it served; ``at_parity_share`` the share served by any
    cheaper model within the tolerance; ``at_floor_share`` the share served by
    a cheaper model whose mean quality on the task cleared the call's
    ``quality_floor``. ``models`` has per-model figures.
    """

    task_type: str
    calls: int
    cost_usd: float
    fallback_cost_usd: float
    saved_usd: float
    premium_quality: float | None
    parity_model: str | None
    parity_share: float
    at_parity_share: float
    at_floor_share: float
    holdout: HoldoutComparison
    models: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Savings:
    """What routing saved against sending every call to the fallback, and
    what it did to quality, measured against the holdout control group."""

    fallback: str | None
    since: float | None
    until: float | None
    filters: dict[str, str | None]
    calls: int
    cost_usd: float
    fallback_cost_usd: float
    saved_usd: float
    saved_share: float
    unpriced_calls: int
    tolerance: float
    parity_share: float
    at_parity_share: float
    at_floor_share: float
    holdout: HoldoutComparison
    per_task: list[TaskSavings] = field(default_factory=list)
    method: str = ""
    source: str = "rows"

    @property
    def empty(self) -> bool:
        return self.calls == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_METHOD = (
    "Welch's t interval on the difference of mean quality (routed minus holdout), "
    "Welch-Satterthwaite degrees of freedom; task types whose scores are all 0 or 1 "
    "use Agresti-Caffo's interval (one pass and one fail added to each group); "
    "overall: task types as strata, weighted by routed calls"
)
_SAVINGS_COLS = (
    "ts",
    "task_type",
    "model",
    "holdout",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "quality",
    "input_cost_per_mtok",
    "output_cost_per_mtok",
    "quality_floor",
)


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: Cornish-Fisher expansion (within 0.1% for df >= 3),
    exact for 1 and 2 degrees of freedom; df below 3 round down (wider)."""
    if not math.isfinite(df) or df > 1e6:
        return statistics.NormalDist().inv_cdf(p)
    if df < 2:
        return math.tan(math.pi * (p - 0.5))
    if df < 3:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return float(z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4)


class _Moments:
    __slots__ = ("graded", "n", "s", "ss")

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0
        self.graded = 0  # scores other than 0 and 1

    def add(self, x: float) -> None:
        self.n += 1
        self.s += x
        self.ss += x * x
        if x != 0.0 and x != 1.0:
            self.graded += 1

    def merge(self, n: int, s: float, ss: float, graded: int) -> None:
        self.n += n
        self.s += s
        self.ss += ss
        self.graded += graded

    @property
    def mean(self) -> float | None:
        return self.s / self.n if self.n else None

    @property
    def var(self) -> float:
        if self.n < 2:
            return math.nan
        return max(self.ss - self.s * self.s / self.n, 0.0) / (self.n - 1)


def _welch(
    strata: list[tuple[float, _Moments, _Moments]], confidence: float
) -> tuple[float | None, float | None, float | None, float | None]:
    """Weighted difference of means over strata, its CI and df.

    Pass/fail strata use Agresti-Caffo: a group of all passes has no sample
    variance, and Welch's interval would shrink to a point.
    """
    usable = [(w, r, h) for w, r, h in strata if r.n >= 2 and h.n >= 2 and w > 0]
    if not usable:
        return None, None, None, None
    wsum = sum(w for w, _, _ in usable)
    diff = center = var = 0.0
    comps: list[tuple[float, int]] = []  # Welch variance terms and their sizes
    for w, r, h in usable:
        w /= wsum
        d = (r.s / r.n) - (h.s / h.n)
        diff += w * d
        if r.graded == 0 and h.graded == 0:
            pr, ph = (r.s + 1) / (r.n + 2), (h.s + 1) / (h.n + 2)
            center += w * (pr - ph)
            var += w * w * (pr * (1 - pr) / (r.n + 2) + ph * (1 - ph) / (h.n + 2))
            continue
        center += w * d
        for m in (r, h):
            c = w * w * m.var / m.n
            var += c
            comps.append((c, m.n))
    denom = sum(c * c / (n - 1) for c, n in comps)
    df = var * var / denom if denom > 0 else math.inf
    half = t_quantile(0.5 + confidence / 2, df) * math.sqrt(var)
    return diff, center - half, center + half, df


def _comparison(
    strata: list[tuple[float, _Moments, _Moments]], confidence: float
) -> HoldoutComparison:
    r_all, h_all = _Moments(), _Moments()
    for _, r, h in strata:
        r_all.n += r.n
        r_all.s += r.s
        r_all.ss += r.ss
        h_all.n += h.n
        h_all.s += h.s
        h_all.ss += h.ss
    diff, lo, hi, df = _welch(strata, confidence)
    return HoldoutComparison(
        routed_calls=r_all.n,
        holdout_calls=h_all.n,
        routed_quality=r_all.mean,
        holdout_quality=h_all.mean,
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        df=None if df is None or not math.isfinite(df) else df,
        confidence=confidence,
        method=_METHOD,
    )


class _Prices:
    """The fallback's price in force at any time (history, then a default)."""

    def __init__(self, history: list[PriceRecord], default: tuple[float, float] | None) -> None:
        self._ts = [r.ts for r in history]
        self._p = [(r.input_cost_per_mtok, r.output_cost_per_mtok) for r in history]
        self._default = default

    def at(self, ts: float) -> tuple[float, float] | None:
        if not self._p:
            return self._default
        i = bisect.bisect_right(self._ts, ts)
        return self._p[max(i - 1, 0)]

    def schedule(self) -> list[tuple[float, float, float]] | None:
        """[(from ts, input, output)] oldest first, as ``Ledger.savings_rollup``
        takes it (None: no price at all)."""
        if self._p:
            return [(t, p[0], p[1]) for t, p in zip(self._ts, self._p, strict=True)]
        if self._default is not None:
            return [(0.0, *self._default)]
        return None


def _infer_fallback(ledger: Ledger, q: LedgerQuery) -> str | None:
    """The holdout calls' model, else the most expensive model in the slice."""
    summary = ledger.model_summary(q)
    held = {m: h for m, (_, h, _) in summary.items() if h}
    if held:
        return max(held, key=lambda m: (held[m], m))
    priced = {m: p for m, (_, _, p) in summary.items() if p is not None}
    if priced:
        return max(priced, key=lambda m: (priced[m], m))
    return None


def _default_price(model: str, catalog: Any) -> tuple[float, float] | None:
    spec = None
    if catalog is not None:
        try:
            spec = catalog[model]
        except KeyError:
            spec = None
    if spec is None:
        from tally_core.catalog import Catalog

        try:
            spec = Catalog([model])[model]
        except UnknownModelError:
            return None
    if spec.input_cost_per_mtok is None or spec.output_cost_per_mtok is None:
        return None
    return float(spec.input_cost_per_mtok), float(spec.output_cost_per_mtok)


def savings(
    ledger: Ledger,
    query: LedgerQuery | None = None,
    *,
    fallback: str | None = None,
    catalog: Any = None,
    since: TimeLike = None,
    until: TimeLike = None,
    org: str | None = None,
    task_type: str | None = None,
    tolerance: float = 0.02,
    confidence: float = 0.95,
    min_obs: int = 10,
    source: Source = "auto",
) -> Savings:
    """Actual cost against every call on ``fallback``, and quality kept.

    The counterfactual prices each call's own tokens at the fallback's price
    in force at the call's time (the ledger's price history, else the
    ``catalog``, else the price map); calls on the fallback count at their
    actual cost; calls without token counts count at their actual cost and
    are reported as ``unpriced_calls``. ``fallback=None`` takes the model of
    the holdout calls, else the most expensive model in the slice. The
    slice is ``query`` (its model is ignored: savings compare every model)
    or the keyword filters.

    Parity: per task type, models with at least ``min_obs`` quality
    observations whose mean is within ``tolerance`` of the fallback's mean on
    that task; ``parity_share`` is the share of all calls served by each task's
    cheapest such model, ``at_parity_share`` by any of them, and
    ``at_floor_share`` by a cheaper model whose mean cleared the call's floor.

    The holdout comparison uses calls with a quality only; see
    ``HoldoutComparison`` and ``Savings.method`` for the interval.

    Read from the hourly roll-ups (``source="auto"``, for a slice of more
    than ``ROLLUPS_ABOVE`` calls) when the time range is on whole hours
    (UTC) or open and the ledger keeps them; the hours in
    which the fallback's price changed read their rows (a price in force
    for part of an hour). A range that starts or ends inside an hour, or an
    older ledger opened read-only without roll-ups, reads the rows. Both
    give the same figures (sums in another order: equal to ~1e-12).
    ``source="rows"`` or ``"rollups"`` forces one.
    """
    if not 0.0 < confidence < 1.0:
        raise InvalidFieldError("confidence", f"must be between 0 and 1, got {confidence!r}")
    if not 0.0 <= tolerance <= 1.0:
        raise InvalidFieldError("tolerance", f"must be between 0 and 1, got {tolerance!r}")
    q = _query(query, since, until, org, task_type, None).replace(model=None)
    _source(source)
    if source == "rollups" and not ledger.uses_rollups(q):
        raise InvalidFieldError(
            "source", "the roll-ups answer whole hours of a ledger that keeps them"
        )
    n = ledger.count(q)
    use = ledger.uses_rollups(q) and (
        source == "rollups" or (source == "auto" and n > ROLLUPS_ABOVE)
    )
    fb = fallback if fallback is not None else (_infer_fallback(ledger, q) if n else None)
    history = ledger.prices(fb) if fb else []
    prices = _Prices(history, _default_price(fb, catalog) if fb and n else None)
    acc = _SavingsAcc(fb)
    if n and use:
        # Hours in which the fallback's price changed: their rows, priced call by call.
        mixed = sorted({
            math.floor(r.ts / HOUR) * HOUR for r in history
            if r.ts % HOUR and (q.since is None or r.ts >= q.since)
            and (q.until is None or r.ts < q.until)
        })
        schedule = prices.schedule()
        for row in ledger.savings_rollup(q, schedule, mixed):
            acc.add_group(row, schedule is not None)
        for h in mixed:
            for row in ledger.select(_SAVINGS_COLS, q.replace(since=float(h),
                                                              until=float(h + HOUR))):
                acc.add_row(row, prices)
        for (tt, m), price in ledger.latest_prices(q).items():
            t = acc.tasks.get(tt)
            if t is not None and m in t["models"]:
                t["models"][m]["price"] = price
    elif n:
        for row in ledger.select(_SAVINGS_COLS, q):
            acc.add_row(row, prices)
    calls, cost, cf, unpriced, tasks = acc.calls, acc.cost, acc.cf, acc.unpriced, acc.tasks

    per_task: list[TaskSavings] = []
    parity_calls = at_parity_calls = floor_calls = 0
    strata: list[tuple[float, _Moments, _Moments]] = []
    for tt in sorted(tasks):
        t = tasks[tt]
        models: dict[str, dict[str, Any]] = t["models"]
        prem = models.get(fb) if fb else None
        premium = prem["q"].mean if prem and prem["q"].n >= min_obs else None
        k = t["calls"]
        # Rank by the price of this task's average call (the latest price seen).
        avg_in, avg_out = t["itok"] / k, t["otok"] / k
        unit = {
            m: (avg_in * mm["price"][0] + avg_out * mm["price"][1]) / 1e6
            if mm["price"] is not None
            else mm["cost"] / mm["calls"]
            for m, mm in models.items()
        }
        rows = []
        ok: list[str] = []
        cleared = 0
        for m in sorted(models, key=lambda x: (unit[x], x)):
            mm = models[m]
            qm = mm["q"]
            if m != fb and qm.n >= min_obs and qm.mean is not None:
                cleared += sum(k for fl, k in mm["floors"].items() if qm.mean >= fl)
            within = (
                premium is not None
                and m != fb
                and qm.n >= min_obs
                and qm.mean is not None
                and qm.mean >= premium - tolerance
            )
            if within:
                ok.append(m)
            rows.append(
                {
                    "model": m,
                    "calls": mm["calls"],
                    "share": mm["calls"] / k,
                    "cost_usd": mm["cost"],
                    "quality_obs": qm.n,
                    "mean_quality": qm.mean,
                    "within_tolerance": within,
                }
            )
        parity = ok[0] if ok else None
        p_calls = models[parity]["calls"] if parity else 0
        a_calls = sum(models[m]["calls"] for m in ok)
        parity_calls += p_calls
        at_parity_calls += a_calls
        floor_calls += cleared
        stratum = (float(t["routed"].n), t["routed"], t["holdout"])
        strata.append(stratum)
        per_task.append(
            TaskSavings(
                task_type=tt,
                calls=k,
                cost_usd=t["cost"],
                fallback_cost_usd=t["cf"],
                saved_usd=t["cf"] - t["cost"],
                premium_quality=premium,
                parity_model=parity,
                parity_share=p_calls / k,
                at_parity_share=a_calls / k,
                at_floor_share=cleared / k,
                holdout=_comparison([stratum], confidence),
                models=rows,
            )
        )
    return Savings(
        fallback=fb,
        since=q.since,
        until=q.until,
        filters={"org": q.org, "task_type": q.task_type},
        calls=calls,
        cost_usd=cost,
        fallback_cost_usd=cf,
        saved_usd=cf - cost,
        saved_share=(cf - cost) / cf if cf > 0 else 0.0,
        unpriced_calls=unpriced,
        tolerance=tolerance,
        parity_share=parity_calls / calls if calls else 0.0,
        at_parity_share=at_parity_calls / calls if calls else 0.0,
        at_floor_share=floor_calls / calls if calls else 0.0,
        holdout=_comparison(strata, confidence),
        per_task=per_task,
        method=_METHOD,
        source="rollups" if use else "rows",
    )


class _SavingsAcc:
    """The per-task, per-model sums ``savings`` works from, fed by rows or by
    roll-up groups."""

    def __init__(self, fallback: str | None) -> None:
        self.fb = fallback
        self.calls = self.unpriced = 0
        self.cost = self.cf = 0.0
        self.tasks: dict[str, dict[str, Any]] = {}

    def _task(self, tt: str, m: str) -> tuple[dict[str, Any], dict[str, Any]]:
        t = self.tasks.get(tt)
        if t is None:
            t = self.tasks[tt] = {
                "calls": 0, "cost": 0.0, "cf": 0.0, "itok": 0, "otok": 0,
                "routed": _Moments(), "holdout": _Moments(), "models": {},
            }
        mm = t["models"].get(m)
        if mm is None:
            mm = t["models"][m] = {
                "calls": 0, "cost": 0.0, "q": _Moments(), "price": None, "floors": {},
            }
        return t, mm

    def add_row(self, row: tuple[Any, ...], prices: _Prices) -> None:
        ts, tt, m, ho, it, ot, c, q, ip, op, floor = row
        c = c or 0.0
        if m == self.fb:
            alt = c
        else:
            p = prices.at(ts)
            if p is None or it is None or ot is None:
                alt = c
                self.unpriced += 1
            else:
                alt = (it * p[0] + ot * p[1]) / 1e6
        self.calls += 1
        self.cost += c
        self.cf += alt
        t, mm = self._task(tt, m)
        t["calls"] += 1
        t["cost"] += c
        t["cf"] += alt
        t["itok"] += it or 0
        t["otok"] += ot or 0
        mm["calls"] += 1
        if floor is not None:
            mm["floors"][floor] = mm["floors"].get(floor, 0) + 1
        mm["cost"] += c
        if ip is not None and op is not None:
            mm["price"] = (ip, op)
        if q is not None:
            mm["q"].add(q)
            t["holdout" if ho else "routed"].add(q)

    def add_group(self, row: tuple[Any, ...], priced: bool) -> None:
        """One roll-up group (``Ledger.savings_rollup``'s row)."""
        tt, m, ho, floor, k, c, it, ot, tok_calls, untok_cost, tok_value, qn, qs, qss, qg = row
        if m == self.fb:
            alt = c
        elif priced:
            alt = untok_cost + tok_value / 1e6
            self.unpriced += k - tok_calls
        else:
            alt = c
            self.unpriced += k
        self.calls += k
        self.cost += c
        self.cf += alt
        t, mm = self._task(tt, m)
        t["calls"] += k
        t["cost"] += c
        t["cf"] += alt
        t["itok"] += it
        t["otok"] += ot
        mm["calls"] += k
        if floor >= 0.0:
            mm["floors"][floor] = mm["floors"].get(floor, 0) + k
        mm["cost"] += c
        if qn:
            mm["q"].merge(qn, qs, qss, qg)
            t["holdout" if ho else "routed"].merge(qn, qs, qss, qg)


# -- export -------------------------------------------------------------------

_NAMES = tuple(c for c, _ in COLUMNS)
_TYPES = {c: t.split()[0] for c, t in COLUMNS}
_JSON_COLS = ("tags", "slugs")


def export(
    ledger: Ledger,
    out: str | os.PathLike[str] | IO[str],
    format: ExportFormat = "jsonl",
    query: LedgerQuery | None = None,
    *,
    since: TimeLike = None,
    until: TimeLike = None,
    org: str | None = None,
    task_type: str | None = None,
    model: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the call log (every column) to a path or a text file; return the
    number of rows. Streams: memory stays flat for any ledger size. The
    slice is ``query`` or the keyword filters; always read from the rows.

    ``csv``: a header of column names; an empty cell is NULL; ``tags`` and
    ``slugs`` are JSON lists. ``json``: one array of objects. ``jsonl``: one
    object per line. ``read_export`` reads any of them back, typed.
    ``progress`` is called with the rows written so far, every 1000 rows.
    """
    if format not in EXPORT_FORMATS:
        raise InvalidFieldError(
            "format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}"
        )
    f = _query(query, since, until, org, task_type, model)
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", encoding="utf-8", newline="") as fh:
            return _export(ledger, fh, format, f, progress)
    return _export(ledger, out, format, f, progress)


def _export(
    ledger: Ledger,
    fh: IO[str],
    format: str,
    f: LedgerQuery,
    progress: Callable[[int], None] | None,
) -> int:
    n = 0
    if format == "csv":
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(_NAMES)
        # Raw values: tags and slugs are stored as JSON text already.
        for row in ledger.select(_NAMES, f):
            writer.writerow(["" if v is None else v for v in row])
            n += 1
            if progress is not None and n % 1000 == 0:
                progress(n)
    else:
        if format == "json":
            fh.write("[")
        for rec in ledger.rows(f):
            if format == "json":
                fh.write(",\n" if n else "\n")
                fh.write(json.dumps(rec))
            else:
                fh.write(json.dumps(rec) + "\n")
            n += 1
            if progress is not None and n % 1000 == 0:
                progress(n)
        if format == "json":
            fh.write("\n]\n" if n else "]\n")
    if progress is not None:
        progress(n)
    return n


def read_export(
    src: str | os.PathLike[str] | IO[str], format: ExportFormat = "jsonl"
) -> Iterator[dict[str, Any]]:
    """Rows from a file ``export`` wrote, with the ledger's types (so
    ``Ledger.append`` takes them back unchanged)."""
    if format not in EXPORT_FORMATS:
        raise InvalidFieldError(
            "format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}"
        )
    if isinstance(src, (str, os.PathLike)):
        with open(src, encoding="utf-8", newline="") as fh:
            yield from _read(fh, format)
    else:
        yield from _read(src, format)


def _read(fh: IO[str], format: str) -> Iterator[dict[str, Any]]:
    if format == "csv":
        for raw in csv.DictReader(fh):
            yield {c: _typed(c, raw.get(c)) for c in _NAMES}
    elif format == "json":
        yield from json.load(fh)
    else:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _typed(col: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    if col in _JSON_COLS:
        return json.loads(text)
    kind = _TYPES[col]
    if kind == "INTEGER":
        return int(text)
    if kind == "REAL":
        return float(text)
    return text


# -- pricing ------------------------------------------------------------------


@dataclass
class PriceRow:
    """One model's facts as Tally sees them, and where they came from.

    ``source`` is ``litellm-map:PATH`` (LiteLLM's installed map, read as a
    data file), ``refreshed-map:PATH`` (``tally pricing --refresh``),
    ``tally-snapshot:...`` (shipped with Tally), ``ledger:...`` (the price a
    Tally last recorded, e.g. a user override), or ``unknown``.
    ``recorded_since`` is when the ledger's record of the current price
    starts; ``changes`` how many price records the ledger holds.
    """

    model: str
    provider: str | None
    input_cost_per_mtok: float | None
    output_cost_per_mtok: float | None
    context_window: int | None
    supports_tools: bool | None
    source: str
    recorded_since: float | None = None
    changes: int = 0


def _lookup(facts: Mapping[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    if name in facts:
        return facts[name]
    if "/" in name and name.split("/", 1)[1] in facts:
        return facts[name.split("/", 1)[1]]
    return None


def pricing(
    models: Iterable[str] | None = None,
    *,
    ledger: Ledger | None = None,
    price_map: str | os.PathLike[str] | None = None,
) -> list[PriceRow]:
    """The catalog for ``models`` (default: every model the ledger knows).

    Prices come from ``price_map`` (a store's refreshed map, say), else
    LiteLLM's installed map, else Tally's snapshot; a model in none of them
    shows the price the ledger last recorded for it.
    """
    names = list(models) if models is not None else (ledger.models() if ledger else [])
    facts, source = load_price_map(price_map)
    history: dict[str, list[PriceRecord]] = {}
    if ledger is not None:
        for rec in ledger.prices():
            history.setdefault(rec.model, []).append(rec)
    out = []
    for name in names:
        hist = history.get(name, [])
        last = hist[-1] if hist else None
        found = _lookup(facts, name)
        if found is not None:
            row = PriceRow(
                model=name,
                provider=found.get("provider"),
                input_cost_per_mtok=found["input_cost_per_mtok"],
                output_cost_per_mtok=found["output_cost_per_mtok"],
                context_window=found.get("context_window"),
                supports_tools=found.get("supports_tools"),
                source=source,
            )
        elif last is not None:
            row = PriceRow(
                name,
                None,
                last.input_cost_per_mtok,
                last.output_cost_per_mtok,
                None,
                None,
                f"ledger:{last.source}",
            )
        else:
            row = PriceRow(name, None, None, None, None, None, "unknown")
        row.changes = len(hist)
        # When did the price shown come into force, as far as the ledger knows?
        for rec in reversed(hist):
            if (rec.input_cost_per_mtok, rec.output_cost_per_mtok) != (
                row.input_cost_per_mtok,
                row.output_cost_per_mtok,
            ):
                break
            row.recorded_since = rec.ts
        out.append(row)
    return out


def refresh_prices(
    directory: str | os.PathLike[str],
    ledger: Ledger | None = None,
    *,
    url: str = PRICE_MAP_URL,
    timeout: float = 10.0,
    fetch: Callable[[str, float], bytes] | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Download LiteLLM's price map into the store ``directory`` and record,
    with today's date, every price change for the models the ledger knows.

    Later Tally instances on the store price from that map. Calls already in
    the ledger keep the price in force at their time, so past reports do not
    change. Models whose price in force is a user override are left alone.
    Raises ``TallyError`` (one line) when the map cannot be fetched or is not
    a price map; returns the changes (model, old and new prices, ts).
    """
    data = (fetch or fetch_price_map)(url, timeout)
    raw = save_price_map(directory, data)
    if ledger is None:
        return []
    when = time.time() if now is None else now
    facts = parse_price_map(raw)
    src = f"refreshed-map:{Path(directory).expanduser() / STORE_PRICE_MAP}"
    wanted: list[tuple[str, float | None, float | None, str]] = []
    old: dict[str, PriceRecord | None] = {}
    for name in ledger.models():
        found = _lookup(facts, name)
        current = ledger.price_at(name, when)
        if found is None or (current is not None and current.source.startswith("user")):
            continue
        old[name] = current
        wanted.append((name, found["input_cost_per_mtok"], found["output_cost_per_mtok"], src))
    changes = []
    for rec in ledger.sync_prices(wanted, ts=when):
        prev = old.get(rec.model)
        changes.append(
            {
                "model": rec.model,
                "old_input_cost_per_mtok": prev.input_cost_per_mtok if prev else None,
                "old_output_cost_per_mtok": prev.output_cost_per_mtok if prev else None,
                "input_cost_per_mtok": rec.input_cost_per_mtok,
                "output_cost_per_mtok": rec.output_cost_per_mtok,
                "ts": rec.ts,
                "date": _iso(rec.ts),
            }
        )
    return changes


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> str:
    """CSV of flat dicts, ``columns`` in order (``None`` as empty): what the
    commands print for ``--format csv``.

    >>> csv_text([{"model": "a", "calls": 2, "cost": None}], ["model", "calls", "cost"])
    'model,calls,cost\\na,2,\\n'
    """
    buf = io.StringIO()
    cols = list(columns)
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r.get(c) for c in cols})
    return buf.getvalue()
