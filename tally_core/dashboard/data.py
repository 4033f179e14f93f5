"""What the dashboard shows, as plain data: read from the ledger and the
learned state through the reports API, never written.

``DashboardData`` is the one object the web app talks to. Each page's figures
come from ``tally_core.reports`` (``report``, ``savings``) and ``Tally.stats``
unchanged, so the page, the JSON API and ``tally report`` cannot disagree;
this module only slices them (one org at a time) and shapes the charts.

>>> from tally_core.ledger import Ledger
>>> led = Ledger(":memory:")
>>> _ = led.append([
...     {"event_id": "e1", "ts": 0.0, "org": "acme", "task_type": "qa-simple",
...      "model": "gpt-4o-mini", "cost_usd": 0.001, "phase": "exploit"},
...     {"event_id": "e2", "ts": 60.0, "org": "beta", "task_type": "qa-simple",
...      "model": "gpt-4o", "cost_usd": 0.01, "error": "RateLimitError"}])
>>> data = DashboardData(led)
>>> data.orgs(), data.default_org()
(['acme', 'beta'], 'acme')
>>> page = data.calls(CallFilter(org="beta", errors_only=True))
>>> page.total, page.rows[0]["model"]
(1, 'gpt-4o')
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tally_core import reports
from tally_core.errors import InvalidFieldError, TallyError
from tally_core.ledger import COLUMNS, Ledger
from tally_core.ledger.query import LedgerQuery
from tally_core.stores.base import StateStore
from tally_core.stores.readonly import ReadOnlyStore

if TYPE_CHECKING:
    from tally_core.router import Tally

__all__ = [
    "PHASES",
    "CallFilter",
    "CallPage",
    "DashboardData",
    "Menus",
    "ReadOnlyStore",
    "as_json",
    "figure_cost",
    "figure_mix",
    "figure_quality",
    "figure_quality_history",
    "figure_savings",
]

PHASES: tuple[str, ...] = ("calibrate", "explore", "exploit", "fallback")
MAX_PER_PAGE = 500
_NAMES = tuple(c for c, _ in COLUMNS)
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class CallFilter:
    """One query of the call log. Times are ISO strings or epoch seconds;
    ``page`` counts from 1, newest calls first."""

    org: str | None = None
    task_type: str | None = None
    model: str | None = None
    phase: str | None = None
    since: str | float | None = None
    until: str | float | None = None
    errors_only: bool = False
    decision_id: str | None = None
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in PHASES:
            raise InvalidFieldError("phase", f"must be one of {', '.join(PHASES)}")
        if not 1 <= self.per_page <= MAX_PER_PAGE:
            raise InvalidFieldError("per_page", f"must be between 1 and {MAX_PER_PAGE}")
        if self.page < 1:
            raise InvalidFieldError("page", "must be 1 or more")


@dataclass(frozen=True)
class Menus:
    """What the call log's filter menus offer for one org."""

    task_types: list[str]
    models: list[str]


@dataclass
class CallPage:
    """One page of the call log, newest first, how many calls match, and how
    often each slug was given on the matching calls (most frequent first)."""

    total: int
    page: int
    per_page: int
    pages: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    slugs: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DashboardData:
    """The ledger (read-only) and, when given, the learned state of one store.

    Parameters
    ----------
    ledger
        A ``Ledger``, opened ``readonly=True`` by ``open``.
    state
        The store's learned state (wrapped in ``ReadOnlyStore``), for the
        task-type pages; ``None`` shows the ledger's figures only.
    fallback
        The premium model the savings are measured against (default: the
        holdout calls' model, as ``tally savings``).
    """

    def __init__(
        self,
        ledger: Ledger,
        state: StateStore | None = None,
        *,
        fallback: str | None = None,
        price_map: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.state = state
        self.fallback = fallback
        self._price_map = price_map
        self._lock = threading.Lock()
        self._tally: Tally | None = None
        self._tally_pool: tuple[str, ...] = ()
        self._orgs: tuple[tuple[int, float | None], list[str]] | None = None
        self._menus: dict[str | None, tuple[tuple[int, float | None], Menus]] = {}

    @classmethod
    def open(
        cls,
        store: str | Path,
        *,
        fallback: str | None = None,
        state: str | Path | None = None,
    ) -> DashboardData:
        """Open a ledger read-only and the learned state, if there is any.

        ``store`` is a store directory (its ``ledger.sqlite3``; a ``StoreError``
        if it has none) or a fleet's ``postgresql://`` ledger, as for ``tally
        report``. ``state`` is where the learned state lives (a directory or a
        ``redis://`` / ``rediss://`` URL); default: the store directory's own,
        none for a PostgreSQL ledger.
        """
        from tally_core.catalog import store_price_map
        from tally_core.home import StoreDir
        from tally_core.ledger import is_postgres_url, open_ledger
        from tally_core.stores import is_redis_url, open_store

        shared = is_postgres_url(store)
        if shared:
            ledger = open_ledger(str(store), readonly=True)
        else:
            ledger = Ledger(StoreDir(store).ledger, readonly=True)
        where = state if state is not None else (None if shared else store)
        view: StateStore | None = None
        try:
            if where is not None and (state is not None or StoreDir(where).state.is_dir()):
                view = ReadOnlyStore(open_store(where), who="the dashboard")
        except BaseException:
            ledger.close()
            raise
        # The price map a store directory keeps (a PostgreSQL ledger has none:
        # then the state's directory, if the state is one).
        local = store if not shared else (state if not is_redis_url(state) else None)
        pm = store_price_map(str(local)) if local is not None else None
        return cls(ledger, view, fallback=fallback, price_map=str(pm) if pm else None)

    def close(self) -> None:
        with self._lock:
            if self._tally is not None:
                self._tally.close()
                self._tally = None
        if self.state is not None:
            self.state.close()
        self.ledger.close()

    # -- what is there -------------------------------------------------------

    def span(self, org: str | None = None) -> dict[str, Any]:
        """Calls and the last call's time: what auto-refresh polls."""
        n, lo, hi = self.ledger.span(LedgerQuery(org=org))
        return {"calls": n, "first_ts": lo, "last_ts": hi, "version": f"{n}:{hi!r}"}

    def orgs(self) -> list[str]:
        """Every org in the ledger, sorted (cached until the ledger grows)."""
        n, _, hi = self.ledger.span()
        with self._lock:
            if self._orgs is not None and self._orgs[0] == (n, hi):
                return list(self._orgs[1])
        found = self.ledger.distinct("org")
        with self._lock:
            self._orgs = ((n, hi), found)
        return found

    def menus(self, org: str | None) -> Menus:
        """The org's task types and models, for the call log's filters (cached
        until the org's ledger changes)."""
        q = LedgerQuery(org=org)
        n, _, hi = self.ledger.span(q)
        with self._lock:
            hit = self._menus.get(org)
            if hit is not None and hit[0] == (n, hi):
                return hit[1]
        models = sorted(self.ledger.model_summary(q))
        tasks = self.ledger.distinct("task_type", q)
        menus = Menus(tasks, models)
        with self._lock:
            self._menus[org] = ((n, hi), menus)
        return menus

    def default_org(self) -> str | None:
        """``default`` if the ledger has it, else the first org."""
        orgs = self.orgs()
        if "default" in orgs:
            return "default"
        return orgs[0] if orgs else None

    # -- the reports API, unchanged -----------------------------------------

    def report(self, **filters: Any) -> reports.Report:
        return reports.report(self.ledger, **filters)

    def savings(self, **filters: Any) -> reports.Savings:
        return reports.savings(self.ledger, fallback=self.fallback, **filters)

    # -- the call log --------------------------------------------------------

    def calls(self, f: CallFilter) -> CallPage:
        """A page of the call log, newest first.

        One pass over the slice the ledger's own filters select; the phase and
        errors-only filters apply on the way, and only the rows up to the
        requested page are held.
        """
        if f.decision_id:
            row = self.ledger.get(f.decision_id)
            rows = [row] if row is not None and (f.org is None or row["org"] == f.org) else []
            slugs = {s: 1 for r in rows for s in (r["slugs"] or [])}
            return CallPage(len(rows), 1, f.per_page, 1, rows, slugs)
        sel = _slice(f)
        keep = f.page * f.per_page
        tail: deque[tuple[Any, ...]] = deque(maxlen=keep)
        phase_at, error_at = _NAMES.index("phase"), _NAMES.index("error")
        slugs_at = _NAMES.index("slugs")
        total = 0
        seen: dict[str, int] = {}  # raw slug lists (JSON text) -> calls: few distinct ones
        for raw in self.ledger.select(_NAMES, sel):
            if f.phase is not None and raw[phase_at] != f.phase:
                continue
            if f.errors_only and raw[error_at] is None:
                continue
            total += 1
            tail.append(raw)
            if raw[slugs_at]:
                seen[raw[slugs_at]] = seen.get(raw[slugs_at], 0) + 1
        counts: dict[str, int] = {}
        for text, k in seen.items():
            for slug in json.loads(text):
                counts[slug] = counts.get(slug, 0) + k
        slugs = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        newest = list(reversed(tail))[(f.page - 1) * f.per_page :]
        pages = max(1, math.ceil(total / f.per_page))
        rows = [_decode(r) for r in newest]
        return CallPage(total, f.page, f.per_page, pages, rows, slugs)

    # -- learned state -------------------------------------------------------

    def stats(
        self, task_type: str, *, org: str = "default", quality_floor: float | None = None
    ) -> list[dict[str, Any]]:
        """``Tally.stats`` for a task type, from the store's learned state, each
        row with an approximate 95% interval on its mean quality
        (``quality_low``, ``quality_high``: a normal interval from the mean and
        the bandit's evidence, clipped to 0-1). Empty without learned state."""
        from tally_core.envelope import parse_task_type

        tt = parse_task_type(task_type)
        if self.state is None:
            return []
        states = self.state.load([(org, tt)])
        state = states.get((org, tt))
        if not state:
            return []
        tally = self._snapshot()
        if tally is None:
            return []
        floor = quality_floor if quality_floor is not None else self.floor_of(tt, org)
        rows = tally.stats(tt, org=org, quality_floor=floor)
        for r in rows:
            m, n = r["mean_quality"], r["evidence"]
            if m is None or not n:
                r["quality_low"] = r["quality_high"] = None
            else:
                half = _Z95 * math.sqrt(max(m * (1 - m), 1e-4) / n)
                r["quality_low"], r["quality_high"] = max(0.0, m - half), min(1.0, m + half)
            r["floor"] = floor
        return rows

    def floor_of(self, task_type: str, org: str) -> float | None:
        """The quality floor most calls of this task type asked for (None: parity)."""
        counts = self.ledger.floors(LedgerQuery(org=org, task_type=task_type))
        return max(counts, key=lambda k: (counts[k], k)) if counts else None

    def _pool(self) -> tuple[list[Any], str | None]:
        """Every model the learned state knows, priced from the price map or,
        for a custom model, from the price the ledger recorded for it."""
        from tally_core.catalog import Catalog, ModelSpec

        assert self.state is not None
        names: set[str] = set()
        for st in self.state.load().values():
            names.update(st["cells"].get("*", {}))
        probe = Catalog(["gpt-4o-mini"], price_map=self._price_map)
        pool: list[Any] = []
        for name in sorted(names):
            if probe.lookup(name) is not None:
                pool.append(name)
                continue
            hist = self.ledger.prices(name)
            if hist:
                pool.append(
                    ModelSpec(
                        name=name,
                        input_cost_per_mtok=hist[-1].input_cost_per_mtok,
                        output_cost_per_mtok=hist[-1].output_cost_per_mtok,
                    )
                )
        fb = self.fallback if self.fallback in names else None
        return pool, fb

    def _snapshot(self) -> Tally | None:
        """A ``Tally`` over the read-only state: no spool, an in-memory ledger
        of its own, nothing written. Rebuilt when the pool changes; refreshed
        when the state does."""
        from tally_core.router import Tally

        pool, fb = self._pool()
        key = tuple(p if isinstance(p, str) else p.name for p in pool)
        if not pool:
            return None
        with self._lock:
            if self._tally is not None and self._tally_pool == key:
                self._tally.refresh()
                return self._tally
            if self._tally is not None:
                self._tally.close()
            try:
                self._tally = Tally(
                    pool,
                    fallback=fb,
                    store=self.state,
                    ledger=":memory:",
                    background=False,
                    price_map=self._price_map,
                )
            except TallyError:
                self._tally = None
                return None
            self._tally_pool = key
            return self._tally


def _slice(f: CallFilter) -> LedgerQuery:
    """The ledger's own filters, validated as the reports API validates them."""
    return LedgerQuery.parse(
        since=f.since, until=f.until, org=f.org, task_type=f.task_type, model=f.model
    )


def _decode(raw: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(_NAMES, raw, strict=True))
    for col in ("tags", "slugs"):
        if row[col] is not None:
            row[col] = json.loads(row[col])
    return row


# -- charts (plotly figure dicts; the page draws them with the bundled plotly.js) ---

_PALETTE = (
    "#4c78a8",
    "#f58518",
    "#54a24b",
    "#e45756",
    "#72b7b2",
    "#b279a2",
    "#eeca3b",
    "#9d755d",
    "#ff9da6",
    "#bab0ac",
)


def _colors(models: Iterable[str]) -> dict[str, str]:
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(sorted(set(models)))}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.01},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "height": 320,
        "legend": {"orientation": "h", "y": -0.2},
        **extra,
    }


def figure_cost(rep: reports.Report) -> dict[str, Any]:
    """Cost per time bucket: one bar series."""
    x = [b.key for b in rep.by_time]
    return {
        "data": [
            {
                "type": "bar",
                "name": "cost (USD)",
                "x": x,
                "y": [b.cost_usd for b in rep.by_time],
                "marker": {"color": _PALETTE[0]},
            }
        ],
        "layout": _layout(f"Cost per {_unit(rep.bucket)}", yaxis={"title": "USD"}),
    }


def figure_mix(rep: reports.Report) -> dict[str, Any]:
    """The model mix over time: one stacked-area series per model (share of calls)."""
    models = sorted({m for b in rep.mix for m in b["models"]})
    colors = _colors(models)
    x = [b["bucket"] for b in rep.mix]
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": m,
            "x": x,
            "y": [b["models"].get(m, 0) / b["calls"] for b in rep.mix],
            "stackgroup": "mix",
            "line": {"color": colors[m], "width": 0.5},
        }
        for m in models
    ]
    return {
        "data": data,
        "layout": _layout(
            f"Model mix per {_unit(rep.bucket)} (share of calls)",
            yaxis={"tickformat": ".0%", "range": [0, 1]},
        ),
    }


def figure_quality(task_type: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each model's mean quality with its interval, and the floor as a line."""
    shown = [r for r in rows if r["mean_quality"] is not None]
    floor = rows[0]["floor"] if rows else None
    data = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "mean quality",
            "x": [r["model"] for r in shown],
            "y": [r["mean_quality"] for r in shown],
            "error_y": {
                "type": "data",
                "symmetric": False,
                "array": [r["quality_high"] - r["mean_quality"] for r in shown],
                "arrayminus": [r["mean_quality"] - r["quality_low"] for r in shown],
            },
            "marker": {"size": 11, "color": _PALETTE[0]},
        }
    ]
    shapes = []
    if floor is not None:
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": floor,
                "y1": floor,
                "line": {"color": "#e45756", "dash": "dash", "width": 2},
            }
        )
    return {
        "data": data,
        "layout": _layout(
            f"Bandit confidence — task: {task_type}"
            + (f" (floor {floor:g})" if floor is not None else " (parity)"),
            yaxis={"title": "quality", "range": [0, 1.05]},
            shapes=shapes,
        ),
    }


def figure_quality_history(task_type: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean quality per time bucket, one line per model."""
    mine = [h for h in history if h["task_type"] == task_type and h["mean_quality"] is not None]
    models = sorted({h["model"] for h in mine})
    colors = _colors(models)
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": m,
            "x": [h["bucket"] for h in mine if h["model"] == m],
            "y": [h["mean_quality"] for h in mine if h["model"] == m],
            "line": {"color": colors[m]},
        }
        for m in models
    ]
    return {
        "data": data,
        "layout": _layout("Quality history", yaxis={"range": [0, 1.05]}),
    }


def figure_savings(sv: reports.Savings) -> dict[str, Any]:
    """Routed minus holdout quality per task type, with its interval (a forest plot)."""
    rows = [t for t in sv.per_task if t.holdout.diff is not None] + (
        [sv] if sv.holdout.diff is not None else []
    )
    names = [getattr(t, "task_type", "overall") for t in rows]
    diffs = [t.holdout.diff for t in rows]
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "routed - holdout quality",
                "y": names,
                "x": diffs,
                "error_x": {
                    "type": "data",
                    "symmetric": False,
                    "array": [(t.holdout.ci_high or 0) - (t.holdout.diff or 0) for t in rows],
                    "arrayminus": [(t.holdout.diff or 0) - (t.holdout.ci_low or 0) for t in rows],
                },
                "marker": {"size": 11, "color": _PALETTE[0]},
            }
        ],
        "layout": _layout(
            "Quality: routed minus holdout, with its interval",
            xaxis={"zeroline": True, "zerolinecolor": "#999"},
            yaxis={"automargin": True},
            shapes=[
                {
                    "type": "line",
                    "yref": "paper",
                    "y0": 0,
                    "y1": 1,
                    "x0": 0,
                    "x1": 0,
                    "line": {"color": "#999", "dash": "dot"},
                }
            ],
        ),
    }


def _unit(bucket: str) -> str:
    return "slice" if bucket == "split" else bucket


def as_json(data: Any) -> Any:
    """Plain JSON values (NaN and infinities as None), the API's output."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {str(k): as_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [as_json(v) for v in data]
    return data
