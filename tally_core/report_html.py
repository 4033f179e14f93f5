"""``tally report --format html``: one self-contained HTML file to mail.

No script, no stylesheet or image from anywhere else: the charts are inline
SVG drawn here from the report's own figures (mail clients run no JavaScript),
so the file reads the same offline, in a browser or in a mail client. Only the
standard library: it needs no extra.

>>> from tally_core.ledger import Ledger
>>> from tally_core.reports import report
>>> led = Ledger(":memory:")
>>> _ = led.append([{"event_id": "e1", "ts": 0.0, "org": "acme", "task_type": "qa-simple",
...                  "model": "gpt-4o-mini", "cost_usd": 0.001}])
>>> page = render_html(report(led))
>>> page.startswith("<!doctype html>"), "<script" in page, page.count('class="bar"')
(True, False, 1)
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from tally_core.reports import Report, Rollup, Savings

__all__ = ["num", "pct", "render_html", "usd", "when"]

_PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b",
            "#9d755d", "#ff9da6", "#bab0ac")  # fmt: skip
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;color:#222;margin:24px;max-width:1000px}
h1{font-size:22px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.meta{color:#555}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:20px}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def usd(x: float | None) -> str:
    """Dollars as the reports and the dashboard show them: six decimals under a dollar.

    >>> usd(0.00847), usd(1234.5), usd(None)
    ('$0.008470', '$1,234.50', '-')
    """
    if x is None:
        return "-"
    return f"${x:.6f}" if abs(x) < 1 else f"${x:,.2f}"


def pct(x: float | None) -> str:
    """>>> pct(0.4321)
    '43.2%'
    """
    return "-" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _rollups(title: str, head: str, rows: Sequence[Rollup]) -> str:
    out = [f"<h2>{_e(title)}</h2><table><tr><th>{_e(head)}</th><th>calls</th><th>cost</th>"
           "<th>share</th><th>tokens in/out</th><th>p50 ms</th><th>p95 ms</th><th>errors</th>"
           "<th>mean quality</th></tr>"]  # fmt: skip
    for r in rows:
        out.append(
            f"<tr><td>{_e(r.key)}</td><td>{r.calls:,}</td><td>{usd(r.cost_usd)}</td>"
            f"<td>{pct(r.cost_share)}</td><td>{r.input_tokens:,}/{r.output_tokens:,}</td>"
            f"<td>{num(r.latency_p50_ms, '.0f')}</td><td>{num(r.latency_p95_ms, '.0f')}</td>"
            f"<td>{pct(r.error_rate)}</td><td>{num(r.mean_quality)}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _bars(rep: Report, width: int = 900, height: int = 200) -> str:
    """Cost per time bucket as SVG bars, one ``rect.bar`` per bucket."""
    n = len(rep.by_time)
    if not n:
        return ""
    top = max(b.cost_usd for b in rep.by_time) or 1.0
    left, bottom = 70, 40
    w = (width - left - 10) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="cost per {_e(rep.bucket)}">']  # fmt: skip
    for i, b in enumerate(rep.by_time):
        h = (height - bottom - 10) * b.cost_usd / top
        x, y = left + i * w, height - bottom - h
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" width="{max(w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{_PALETTE[0]}"><title>{_e(b.key)}: {usd(b.cost_usd)}'
            "</title></rect>"
        )
        if n <= 12 or i % max(1, n // 8) == 0:
            parts.append(
                f'<text x="{x + w / 2:.1f}" y="{height - bottom + 14}" font-size="10" '
                f'text-anchor="middle">{_e(b.key[-11:])}</text>'
            )
    parts.append(
        f'<text x="4" y="14" font-size="10">{usd(top)}</text>'
        f'<line x1="{left}" x2="{width - 10}" y1="{height - bottom}" y2="{height - bottom}" '
        'stroke="#999"/></svg>'
    )
    return "".join(parts)


def _mix(rep: Report, width: int = 900, height: int = 200) -> str:
    """The model mix per bucket as 100% stacked SVG bars (``rect.mix-seg``) and a legend."""
    if not rep.mix:
        return ""
    models = sorted({m for b in rep.mix for m in b["models"]})
    color = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}
    left, bottom = 70, 20
    w = (width - left - 10) / len(rep.mix)
    inner = height - bottom - 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'role="img" aria-label="model mix">']  # fmt: skip
    for i, b in enumerate(rep.mix):
        y = float(height - bottom)
        for m in models:
            k = b["models"].get(m, 0)
            if not k:
                continue
            h = inner * k / b["calls"]
            y -= h
            parts.append(
                f'<rect class="mix-seg" x="{left + i * w + 1:.1f}" y="{y:.1f}" '
                f'width="{max(w - 2, 1):.1f}" height="{h:.1f}" fill="{color[m]}">'
                f"<title>{_e(b['bucket'])} {_e(m)}: {k} of {b['calls']}</title></rect>"
            )
    parts.append('<text x="4" y="14" font-size="10">100%</text></svg>')
    legend = "".join(
        f'<span class="model"><i class="sw" style="background:{color[m]}"></i>{_e(m)}</span>'
        for m in models
    )
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _savings(sv: Savings) -> str:
    h = sv.holdout
    out = [
        "<h2>Savings against always the fallback</h2>",
        f"<p>Cost <b>{usd(sv.cost_usd)}</b> against <b>{usd(sv.fallback_cost_usd)}</b> had "
        f"every call gone to {_e(sv.fallback or '-')} at the prices in force: saved "
        f"<b>{usd(sv.saved_usd)}</b> ({pct(sv.saved_share)}). Served by a cheaper model "
        f"whose quality cleared the call's floor: {pct(sv.at_floor_share)}. Holdout: "
        f"{h.holdout_calls} calls; routed minus holdout quality {num(h.diff, '+.3f')} "
        f"({round(h.confidence * 100)}% interval {num(h.ci_low, '+.3f')} to "
        f"{num(h.ci_high, '+.3f')}).</p>",
        "<table><tr><th>task type</th><th>calls</th><th>cost</th><th>always fallback</th>"
        "<th>saved</th><th>at floor</th><th>routed - holdout</th><th>interval</th></tr>",
    ]
    for t in sv.per_task:
        out.append(
            f"<tr><td>{_e(t.task_type)}</td><td>{t.calls:,}</td><td>{usd(t.cost_usd)}</td>"
            f"<td>{usd(t.fallback_cost_usd)}</td><td>{usd(t.saved_usd)}</td>"
            f"<td>{pct(t.at_floor_share)}</td><td>{num(t.holdout.diff, '+.3f')}</td>"
            f"<td>{num(t.holdout.ci_low, '+.3f')} to {num(t.holdout.ci_high, '+.3f')}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def render_html(rep: Report, sv: Savings | None = None, *, where: str | None = None) -> str:
    """The report (and, if given, the savings) as one self-contained HTML page."""
    t = rep.totals
    scope = ", ".join(f"{k} {v}" for k, v in rep.filters.items() if v) or "every org"
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>Tally report: {_e(scope)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Tally report: {_e(scope)}</h1>",
        f'<p class="meta">Calls from {when(rep.first_ts)} to {when(rep.last_ts)} UTC'
        + (f"; store {_e(where)}" if where else "")
        + f"; made {when(time.time())} UTC.</p>",
    ]
    if rep.empty:
        parts.append("<p>No calls for this selection.</p></body></html>\n")
        return "".join(parts)
    parts.append(
        '<div class="cards">'
        f'<div class="card">calls<b id="total-calls">{t.calls:,}</b></div>'
        f'<div class="card">cost<b id="total-cost">{usd(t.cost_usd)}</b></div>'
        f'<div class="card">tokens in/out<b>{t.input_tokens:,}/{t.output_tokens:,}</b></div>'
        f'<div class="card">latency p50/p95<b>{num(t.latency_p50_ms, ".0f")}/'
        f"{num(t.latency_p95_ms, '.0f')} ms</b></div>"
        f'<div class="card">errors<b>{pct(t.error_rate)}</b></div>'
        f'<div class="card">mean quality<b>{num(t.mean_quality)}</b></div></div>'
    )
    if sv is not None and not sv.empty:
        parts.append(_savings(sv))
    unit = "slice" if rep.bucket == "split" else rep.bucket
    parts.append(f"<h2>Cost per {_e(unit)} (UTC)</h2>{_bars(rep)}")
    parts.append(f"<h2>Model mix per {_e(unit)} (share of calls)</h2>{_mix(rep)}")
    parts.append(_rollups("Cost by model", "model", rep.by_model))
    parts.append(_rollups("Cost by org", "org", rep.by_org))
    parts.append(_rollups("Cost by task type", "task type", rep.by_task_type))
    parts.append(
        "<h2>Quality by task type and model</h2><table><tr><th>task type</th><th>model</th>"
        "<th>calls</th><th>quality obs</th><th>mean quality</th><th>cost</th></tr>"
    )
    for q in rep.quality:
        parts.append(
            f"<tr><td>{_e(q['task_type'])}</td><td>{_e(q['model'])}</td><td>{q['calls']:,}</td>"
            f"<td>{q['quality_obs']:,}</td><td>{num(q['mean_quality'])}</td>"
            f"<td>{usd(q['cost_usd'])}</td></tr>"
        )
    parts.append("</table></body></html>\n")
    return "".join(parts)
