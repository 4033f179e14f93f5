"""The dashboard in a real browser: Playwright driving Debian's chromium
(``apt-get install chromium``; never a downloaded browser) against a server
on a free loopback port, over a store of known calls.

Screenshots of each page go to ``$TALLY_ARTIFACTS`` (default: a pytest tmp
dir, printed); with ``TALLY_DOCS_SCREENSHOT=1`` the overview is also written
to ``docs/dashboard-overview.png`` for the README.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="needs the dashboard extra")
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")

from tally_core import Ledger, reports  # noqa: E402
from tally_core.dashboard.app import create_app, pct, usd  # noqa: E402
from tally_core.dashboard.data import DashboardData  # noqa: E402
from tests.dashboard_support import ledger_fixture, store_fixture  # noqa: E402, F401

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TALLY_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def base_url(store: tuple[Path, dict[str, Any]]) -> Iterator[str]:
    import uvicorn

    data = DashboardData.open(store[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(data, refresh_s=1.0)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the dashboard server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    data.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # the browser exists but cannot start here
            pytest.skip(f"chromium at {CHROMIUM} cannot start: {exc}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = Path(os.environ.get("TALLY_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {where}")
    return where


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    # Offline proof: any request that leaves the dashboard's own server fails the test.
    outside: list[str] = []
    local = ("http://127.0.0.1", "data:")
    pg.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert outside == [], f"requests left the machine: {outside}"
    assert errors == [], f"JavaScript errors: {errors}"


def _traces(pg: Any, chart: str, layer: str = "scatterlayer") -> int:
    return int(pg.locator(f"#chart-{chart} .{layer} .trace").count())


def _text(pg: Any, selector: str) -> str:
    return str(pg.locator(selector).inner_text()).strip()


def test_overview_shows_the_reports_totals_and_draws_charts(
    page: Any, base_url: str, ledger: Ledger, artifacts: Path
) -> None:
    page.goto(f"{base_url}/?org=acme&by=day")
    page.wait_for_selector("#chart-mix .scatterlayer .trace")
    rep = reports.report(ledger, org="acme", by="day")
    sv = reports.savings(ledger, org="acme")
    assert _text(page, "#total-calls") == str(rep.totals.calls) == "1200"
    assert _text(page, "#total-cost") == usd(rep.totals.cost_usd)
    assert _text(page, "#total-input-tokens") == str(rep.totals.input_tokens)
    assert _text(page, "#total-output-tokens") == str(rep.totals.output_tokens)
    assert _text(page, "#total-errors") == str(rep.totals.errors)
    assert _text(page, "#total-p50") == f"{rep.totals.latency_p50_ms:.1f}"
    assert _text(page, "#spend") == usd(sv.cost_usd)
    assert _text(page, "#counterfactual") == usd(sv.fallback_cost_usd)
    assert _text(page, "#saved") == usd(sv.saved_usd)
    assert _text(page, "#at-floor-share") == pct(sv.at_floor_share)
    # Cost per day: one bar series of five days; the mix: one area per model.
    assert _traces(page, "cost", "barlayer") == 1
    assert page.locator("#chart-cost .barlayer .point").count() == len(rep.by_time) == 5
    models = {m for b in rep.mix for m in b["models"]}
    assert _traces(page, "mix") == len(models) == 3
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)
    if os.environ.get("TALLY_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(DOCS / "dashboard-overview.png"))


def test_task_types_show_the_bandit_and_the_floor(
    page: Any, base_url: str, artifacts: Path
) -> None:
    page.goto(f"{base_url}/tasks?org=acme")
    page.wait_for_selector("#chart-quality-0 .scatterlayer .trace")
    sections = page.locator("section.task")
    assert sections.count() == 3
    qa = page.locator("#task-qa-simple")
    assert qa.locator("table.stats tr").count() == 1 + 3  # a row per model
    stats = page.request.get(f"{base_url}/api/stats/qa-simple?org=acme").json()
    now = next((r for r in stats if r["phase"] == "exploit"), None)
    if now is not None:
        assert qa.locator(".routes-to").inner_text() == now["model"]
    # Each model with a mean is a point with an interval; the floor is a line.
    i = int(qa.locator(".chart").first.get_attribute("id").rsplit("-", 1)[1])
    points = page.locator(f"#chart-quality-{i} .scatterlayer .point")
    assert points.count() == sum(1 for r in stats if r["mean_quality"] is not None)
    assert page.locator(f"#chart-quality-{i} .errorbar").count() == points.count()
    assert page.locator(f"#chart-quality-{i} .shapelayer path").count() >= 1
    assert "floor 0.8" in page.locator(f"#chart-quality-{i} .gtitle").text_content()
    page.screenshot(path=str(artifacts / "tasks.png"), full_page=True)


def test_filters_change_the_call_list(
    page: Any, base_url: str, store: tuple[Path, dict[str, Any]], artifacts: Path
) -> None:
    page.goto(f"{base_url}/calls?org=acme")
    assert _text(page, "#calls-total") == "1200"
    assert page.locator("#calls tr.call").count() == 50
    api = page.request.get(f"{base_url}/api/calls?org=acme&per_page=1").json()
    shown = page.locator('#calls-slugs .slug[data-slug="incomplete"]').inner_text()
    assert shown == f"incomplete ×{api['slugs']['incomplete']}"
    first = page.locator("#calls tr.call").first.get_attribute("id")
    page.click("#next")
    assert _text(page, "#calls-page") == "2"
    assert page.locator("#calls tr.call").first.get_attribute("id") != first
    # Errors only.
    page.goto(f"{base_url}/calls?org=acme")
    page.check("#filter-errors")
    page.click("#scope button[type=submit]")
    assert _text(page, "#calls-total") == str(store[1]["acme"]["errors"])
    cells = page.locator("#calls tr.call .c-error").all_inner_texts()
    assert cells and set(cells) == {"RateLimitError"}
    # A model and a phase.
    page.uncheck("#filter-errors")
    page.select_option("#filter-model", "gpt-4o-mini")
    page.select_option("#filter-phase", "exploit")
    page.click("#scope button[type=submit]")
    n = int(_text(page, "#calls-total"))
    assert 0 < n < 1200
    assert set(page.locator("#calls tr.call .c-model").all_inner_texts()) == {"gpt-4o-mini"}
    assert set(page.locator("#calls tr.call .c-phase").all_inner_texts()) == {"exploit"}
    page.screenshot(path=str(artifacts / "calls.png"), full_page=True)
    # A decision id links to its row.
    link = page.locator("#calls a.decision").nth(3)
    did = link.inner_text()
    link.click()
    assert _text(page, "#calls-total") == "1"
    assert page.locator("#calls a.decision").inner_text() == did


def test_org_switcher_isolates_orgs(page: Any, base_url: str, ledger: Ledger) -> None:
    page.goto(f"{base_url}/?org=acme")
    assert _text(page, "#current-org") == "acme"
    page.select_option("#org-switcher", "beta")
    page.wait_for_url(re.compile(r"org=beta"))
    page.wait_for_selector("#chart-mix .scatterlayer .trace")
    beta = reports.report(ledger, org="beta")
    assert _text(page, "#current-org") == "beta"
    assert _text(page, "#total-calls") == str(beta.totals.calls) == "200"
    assert _text(page, "#total-cost") == usd(beta.totals.cost_usd)
    assert _traces(page, "mix") == len({m for b in beta.mix for m in b["models"]})
    # The org sticks across pages; acme's task types never show under beta.
    page.click("#nav-tasks")
    assert _text(page, "#current-org") == "beta"
    assert page.locator("section.task").count() == 1
    assert page.locator("#task-code-debug").count() == 0
    page.click("#nav-calls")
    assert _text(page, "#calls-total") == "200"


def test_savings_page_shows_the_savings_figures(
    page: Any, base_url: str, ledger: Ledger, artifacts: Path
) -> None:
    page.goto(f"{base_url}/savings?org=acme")
    page.wait_for_selector("#chart-forest .scatterlayer .trace")
    sv = reports.savings(ledger, org="acme")
    assert _text(page, "#sv-saved") == usd(sv.saved_usd)
    assert _text(page, "#sv-saved-share") == pct(sv.saved_share)
    for t in sv.per_task:
        row = page.locator(f'#savings tr[data-task="{t.task_type}"]')
        assert row.locator(".saved").inner_text() == usd(t.saved_usd)
        assert row.locator(".diff").inner_text() == f"{t.holdout.diff:+.3f}"
        assert row.locator(".ci").inner_text() == (
            f"{t.holdout.ci_low:+.3f} … {t.holdout.ci_high:+.3f}"
        )
    shown = sum(1 for t in sv.per_task if t.holdout.diff is not None) + 1  # and the total
    assert page.locator("#chart-forest .scatterlayer .point").count() == shown
    page.screenshot(path=str(artifacts / "savings.png"), full_page=True)


def test_time_range_and_auto_refresh(page: Any, base_url: str, ledger: Ledger) -> None:
    page.goto(f"{base_url}/?org=acme&since=2025-06-03&until=2025-06-04")
    day = reports.report(ledger, org="acme", since="2025-06-03", until="2025-06-04")
    assert _text(page, "#total-calls") == str(day.totals.calls)
    assert 0 < day.totals.calls < 1200
    # The fixture's calls are in 2025: the last 24 hours hold none.
    page.select_option("#range", "24h")
    page.wait_for_url(re.compile(r"range=24h"))
    page.fill("#since", "")
    page.fill("#until", "")
    page.click("#scope button[type=submit]")
    assert _text(page, "#total-calls") == "0"
    # Auto-refresh polls the org's span and stays put while nothing changes.
    page.check("#auto-refresh")
    with page.expect_response(re.compile(r"/api/span\?org=acme"), timeout=15000) as resp:
        pass
    assert resp.value.json()["calls"] == 1200


def test_screenshots_were_saved(artifacts: Path) -> None:
    saved = sorted(p.name for p in artifacts.glob("*.png"))
    if not saved:
        pytest.skip("no screenshots: the browser tests were skipped")
    assert saved == ["calls.png", "overview.png", "savings.png", "tasks.png"]
    assert all((artifacts / n).stat().st_size > 10_000 for n in saved)
