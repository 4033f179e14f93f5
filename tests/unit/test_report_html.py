"""``tally report --format html``: one self-contained page with the report's figures."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from tally_core import Ledger, reports
from tally_core.cli import app
from tally_core.home import StoreDir
from tally_core.report_html import render_html, usd
from tests.unit import test_cli_reports
from tests.unit.test_reports import KNOWN

runner = CliRunner()
store = test_cli_reports.store  # the store of known calls the report commands are tested on


def _html(store: Path, *args: str) -> str:
    res = runner.invoke(app, ["report", "--store", str(store), "-f", "html", *args])
    assert res.exit_code == 0, res.output
    return str(res.stdout)


def test_one_self_contained_page_with_the_reports_figures(store: Path) -> None:
    page = _html(store, "--by", "day")
    led = Ledger(StoreDir(store).ledger, readonly=True)
    rep = reports.report(led, by="day")
    sv = reports.savings(led)
    led.close()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # Nothing fetched from anywhere: no script, no link, no src, no url().
    for needle in ("<script", "<link", "src=", "url(", "@import"):
        assert needle not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * 2
    assert 'id="total-calls">5<' in page
    assert usd(rep.totals.cost_usd) == "$0.008470"
    assert 'id="total-cost">$0.008470<' in page
    # Cost per day: a bar per day; the mix: a segment per (day, model), a legend entry per model.
    assert page.count('class="bar"') == len(rep.by_time) == 2
    assert page.count('class="mix-seg"') == sum(len(b["models"]) for b in rep.mix) == 4
    assert page.count('class="model"') == 2
    assert f"saved <b>{usd(sv.saved_usd)}</b>" in page
    for m in rep.by_model:
        assert f"<td>{m.key}</td><td>{m.calls:,}</td><td>{usd(m.cost_usd)}</td>" in page


def test_filters_escaping_and_an_empty_selection(store: Path) -> None:
    page = _html(store, "--org", "acme", "--model", "gpt-4o-mini")
    assert 'id="total-calls">2<' in page and "Savings against" not in page  # one model: no savings
    assert "Tally report: org acme, model gpt-4o-mini" in page
    page = _html(store, "--since", "2030-01-01")
    assert "No calls for this selection." in page
    led = Ledger(StoreDir(store).ledger)
    led.append([{**KNOWN[0], "event_id": "x", "org": "<b>evil</b>", "task_type": "a&b"}])
    led.close()
    led = Ledger(StoreDir(store).ledger, readonly=True)
    page = render_html(reports.report(led))
    led.close()
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page and "a&amp;b" in page
    res = runner.invoke(app, ["report", "--store", str(store), "-f", "pdf"])
    assert res.exit_code == 2 and "table, json, csv, html" in res.output
