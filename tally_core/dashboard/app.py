"""The dashboard's web app: server-rendered pages and a JSON API on Starlette.

Every page and every ``/api/*`` answer reads one org's slice of the ledger
through ``DashboardData`` (the reports API); nothing here writes. Charts are
plotly figures drawn by the plotly.js that the ``plotly`` package ships,
served from this app, so the dashboard works with no internet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from tally_core.dashboard.data import (
    PHASES,
    CallFilter,
    DashboardData,
    as_json,
    figure_cost,
    figure_mix,
    figure_quality,
    figure_quality_history,
    figure_savings,
)
from tally_core.errors import InvalidFieldError, TallyError
from tally_core.report_html import num, pct, usd, when
from tally_core.reports import TIME_BUCKETS

__all__ = ["RANGES", "create_app", "pct", "usd"]

_HERE = Path(__file__).parent
#: The time-range picker: label -> seconds back from now (None: everything).
RANGES: dict[str, float | None] = {
    "all": None,
    "1h": 3600.0,
    "24h": 86400.0,
    "7d": 7 * 86400.0,
    "30d": 30 * 86400.0,
}


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    js: str = get_plotlyjs()
    return js.encode("utf-8")


@dataclass(frozen=True)
class _Scope:
    """The org and time slice every page and API call is limited to."""

    org: str | None
    since: str | float | None
    until: str | None
    range: str
    query: str  # the scope as a query string, for links that keep it


def create_app(data: DashboardData, *, org: str | None = None, refresh_s: float = 5.0) -> Starlette:
    """The ASGI app over ``data``. With ``org`` set, only that org is served
    (any other is refused); otherwise the org switcher lists every org, and a
    page shows one at a time (``default``, else the first, when none is asked for)."""
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    env = templates.env
    env.filters.update(usd=usd, pct=pct, num=num, when=when)
    env.globals.update(phases=PHASES, ranges=list(RANGES), buckets=TIME_BUCKETS)

    def scope(request: Request) -> _Scope:
        q = request.query_params
        orgs = data.orgs()
        wanted = q.get("org") or org or data.default_org()
        if org is not None and wanted != org:
            raise HTTPException(403, f"this dashboard serves org {org!r} only")
        if wanted is not None and orgs and wanted not in orgs:
            raise HTTPException(404, f"no calls for org {wanted!r} in this ledger")
        rng = q.get("range") or "all"
        if rng not in RANGES:
            raise InvalidFieldError("range", f"must be one of {', '.join(RANGES)}, got {rng!r}")
        since: str | float | None = q.get("since") or None
        back = RANGES[rng]
        if since is None and back is not None:
            # From the start of the hour: a range on whole hours reads the roll-ups.
            since = (time.time() - back) // 3600 * 3600
        until = q.get("until") or None
        keep = {"org": wanted, "range": rng, "since": q.get("since"), "until": until}
        query = urlencode({k: v for k, v in keep.items() if v})
        return _Scope(wanted, since, until, rng, query)

    def page(name: str, request: Request, sc: _Scope, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {
                "scope": sc,
                "orgs": [org] if org is not None else data.orgs(),
                "locked": org is not None,
                "refresh_s": refresh_s,
                "span": data.span(sc.org),
                "q": request.query_params,
                **ctx,
            },
        )

    def by_of(request: Request, default: str = "auto") -> str:
        by = request.query_params.get("by") or default
        if by not in TIME_BUCKETS:
            raise InvalidFieldError("by", f"must be one of {', '.join(TIME_BUCKETS)}, got {by!r}")
        return by

    def call_filter(request: Request, sc: _Scope) -> CallFilter:
        q = request.query_params
        return CallFilter(
            org=sc.org,
            task_type=q.get("task_type") or None,
            model=q.get("model") or None,
            phase=q.get("phase") or None,
            since=sc.since,
            until=sc.until,
            errors_only=q.get("errors") in ("1", "true", "on", "yes"),
            decision_id=q.get("decision") or None,
            page=_int(q.get("page"), "page", 1),
            per_page=_int(q.get("per_page"), "per_page", 50),
        )

    # -- pages ---------------------------------------------------------------

    def overview(request: Request) -> Response:
        sc = scope(request)
        rep = data.report(org=sc.org, since=sc.since, until=sc.until, by=by_of(request))
        sv = data.savings(org=sc.org, since=sc.since, until=sc.until)
        below = [t.task_type for t in sv.per_task if (t.holdout.ci_high or 0) < 0]
        return page(
            "overview.html",
            request,
            sc,
            rep=rep,
            sv=sv,
            below=below,
            figures={"cost": figure_cost(rep), "mix": figure_mix(rep)},
        )

    def tasks(request: Request) -> Response:
        sc = scope(request)
        rep = data.report(org=sc.org, since=sc.since, until=sc.until, by=by_of(request))
        rows = []
        figures: dict[str, Any] = {}
        for i, t in enumerate(rep.by_task_type):
            st = data.stats(t.key, org=sc.org or "default") if sc.org else []
            now = next((r for r in st if r["phase"] == "exploit"), None) or next(
                (r for r in st if r["phase"] == "fallback"), None
            )
            rows.append({"rollup": t, "stats": st, "now": now, "i": i})
            if st:
                figures[f"quality-{i}"] = figure_quality(t.key, st)
            figures[f"history-{i}"] = figure_quality_history(t.key, rep.quality_history)
        return page("tasks.html", request, sc, rep=rep, rows=rows, figures=figures)

    def calls(request: Request) -> Response:
        sc = scope(request)
        f = call_filter(request, sc)
        result = data.calls(f)
        menus = data.menus(sc.org)
        return page(
            "calls.html",
            request,
            sc,
            f=f,
            result=result,
            task_types=menus.task_types,
            models=menus.models,
            figures={},
        )

    def savings(request: Request) -> Response:
        sc = scope(request)
        sv = data.savings(org=sc.org, since=sc.since, until=sc.until)
        return page("savings.html", request, sc, sv=sv, figures={"forest": figure_savings(sv)})

    async def plotly_js(request: Request) -> Response:
        return Response(
            _plotly_js(),
            media_type="application/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    # -- the JSON API ----------------------------------------------------------

    def api_report(request: Request) -> Response:
        sc = scope(request)
        q = request.query_params
        rep = data.report(
            org=sc.org,
            since=sc.since,
            until=sc.until,
            task_type=q.get("task_type") or None,
            model=q.get("model") or None,
            by=by_of(request),
        )
        return JSONResponse(as_json(rep.to_dict()))

    def api_savings(request: Request) -> Response:
        sc = scope(request)
        q = request.query_params
        sv = data.savings(
            org=sc.org,
            since=sc.since,
            until=sc.until,
            task_type=q.get("task_type") or None,
            tolerance=_float(q.get("tolerance"), "tolerance", 0.02),
            confidence=_float(q.get("confidence"), "confidence", 0.95),
        )
        return JSONResponse(as_json(sv.to_dict()))

    def api_calls(request: Request) -> Response:
        sc = scope(request)
        return JSONResponse(as_json(data.calls(call_filter(request, sc)).to_dict()))

    def api_stats(request: Request) -> Response:
        sc = scope(request)
        q = request.query_params
        floor = q.get("floor")
        rows = data.stats(
            request.path_params["task_type"],
            org=sc.org or "default",
            quality_floor=None if floor is None else _float(floor, "floor", 0.0),
        )
        return JSONResponse(as_json(rows))

    def api_orgs(request: Request) -> Response:
        return JSONResponse([org] if org is not None else data.orgs())

    def api_span(request: Request) -> Response:
        return JSONResponse(as_json(data.span(scope(request).org)))

    # -- errors ----------------------------------------------------------------

    def _error(request: Request, status: int, field: str | None, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"field": field, "message": message}}, status)
        text = f"{field}: {message}" if field else message
        return HTMLResponse(
            f"<!doctype html><title>Tally</title><h1>{status}</h1><p class=error>"
            f"{_escape(text)}</p><p><a href='/'>Overview</a></p>",
            status,
        )

    async def bad_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TallyError)
        field = exc.field if isinstance(exc, InvalidFieldError) else None
        message = str(exc.args[1]) if isinstance(exc, InvalidFieldError) else str(exc)
        return _error(request, 400, field, message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(request, exc.status_code, None, str(exc.detail))

    routes: list[Route | Mount] = [
        Route("/", overview),
        Route("/tasks", tasks),
        Route("/calls", calls),
        Route("/savings", savings),
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        Route("/api/report", api_report),
        Route("/api/savings", api_savings),
        Route("/api/calls", api_calls),
        Route("/api/stats/{task_type}", api_stats),
        Route("/api/orgs", api_orgs),
        Route("/api/span", api_span),
    ]
    handlers: dict[Any, Callable[..., Any]] = {TallyError: bad_input, HTTPException: http_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def _int(text: str | None, field: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidFieldError(field, f"must be a whole number, got {text!r}") from None


def _float(text: str | None, field: str, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        raise InvalidFieldError(field, f"must be a number, got {text!r}") from None


def _escape(text: str) -> str:
    import html

    return html.escape(text)
