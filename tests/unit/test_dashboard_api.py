"""The dashboard's JSON API and pages over a store of known calls: the same
figures as the reports API, one org at a time, nothing written, a
non-loopback bind refused without the flag."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="needs the dashboard extra")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tally_core import Ledger, Tally, reports  # noqa: E402
from tally_core.cli import app as cli_app  # noqa: E402
from tally_core.dashboard import check_host, server  # noqa: E402
from tally_core.dashboard.app import create_app  # noqa: E402
from tally_core.dashboard.data import DashboardData, as_json  # noqa: E402
from tally_core.ledger.query import LedgerQuery
from tests.dashboard_support import ERROR_EVERY, MODELS, START, ledger_fixture, store_fixture  # noqa: E402, F401


@pytest.fixture(scope="module")
def client(store: tuple[Path, dict[str, Any]]) -> Iterator[TestClient]:
    data = DashboardData.open(store[0])
    with TestClient(create_app(data)) as c:
        yield c
    data.close()


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(as_json(x)))


def test_report_api_returns_what_the_python_api_returns(
    client: TestClient, ledger: Ledger, store: tuple[Path, dict[str, Any]]
) -> None:
    for org in ("acme", "beta"):
        got = client.get("/api/report", params={"org": org, "by": "day"}).json()
        assert got == _plain(reports.report(ledger, org=org, by="day").to_dict())
        assert got["totals"]["calls"] == store[1][org]["calls"]
        assert got["totals"]["errors"] == store[1][org]["errors"]
        assert {o["key"] for o in got["by_org"]} == {org}  # orgs never mix
    day2 = START + 86400
    got = client.get(
        "/api/report",
        params={"org": "acme", "since": "2025-06-03", "until": "2025-06-03", "task_type": "qa"},
    ).json()
    want = reports.report(ledger, org="acme", since=day2, until=day2 + 86400, task_type="qa")
    assert got == _plain(want.to_dict()) and 0 < got["totals"]["calls"] < 700


def test_report_api_equals_the_cli(client: TestClient, store: tuple[Path, dict[str, Any]]) -> None:
    res = CliRunner().invoke(
        cli_app, ["report", "--store", str(store[0]), "--org", "beta", "-f", "json"]
    )
    assert res.exit_code == 0, res.output
    assert client.get("/api/report", params={"org": "beta"}).json() == json.loads(res.stdout)


def test_savings_api(client: TestClient, ledger: Ledger) -> None:
    got = client.get("/api/savings", params={"org": "acme"}).json()
    want = reports.savings(ledger, org="acme")
    assert got == _plain(want.to_dict())
    assert got["fallback"] == "gpt-4o" and got["holdout"]["holdout_calls"] > 50
    assert got["saved_usd"] > 0
    got = client.get("/api/savings", params={"org": "acme", "tolerance": "0.05"}).json()
    assert got["tolerance"] == 0.05
    bad = client.get("/api/savings", params={"org": "acme", "confidence": "2"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "confidence"


def test_calls_api_filters_and_pages(
    client: TestClient, ledger: Ledger, store: tuple[Path, dict[str, Any]]
) -> None:
    everything = client.get("/api/calls", params={"org": "acme", "per_page": 500}).json()
    assert everything["total"] == 1200 and everything["pages"] == 3
    ts = [r["ts"] for r in everything["rows"]]
    assert ts == sorted(ts, reverse=True)  # newest first
    p1 = client.get("/api/calls", params={"org": "acme", "per_page": 20}).json()
    p2 = client.get("/api/calls", params={"org": "acme", "per_page": 20, "page": 2}).json()
    assert [r["event_id"] for r in p1["rows"] + p2["rows"]] == [
        r["event_id"] for r in everything["rows"][:40]
    ]
    slugs: dict[str, int] = {}
    for r in ledger.rows(LedgerQuery(org="acme")):
        for sl in r["slugs"] or []:
            slugs[sl] = slugs.get(sl, 0) + 1
    assert everything["slugs"] == slugs and slugs["incomplete"] > 20
    errs = client.get("/api/calls", params={"org": "acme", "errors": "1", "per_page": 500}).json()
    assert errs["total"] == store[1]["acme"]["errors"] == 1200 // ERROR_EVERY
    assert all(r["error"] == "RateLimitError" for r in errs["rows"])
    assert errs["slugs"] == {}  # failed calls carry no quality slugs
    mini = client.get(
        "/api/calls", params={"org": "acme", "model": "gpt-4o-mini", "phase": "exploit"}
    ).json()
    q = LedgerQuery(org="acme", model="gpt-4o-mini")
    n = sum(1 for r in ledger.rows(q) if r["phase"] == "exploit")
    assert mini["total"] == n > 0
    assert {(r["model"], r["phase"], r["org"]) for r in mini["rows"]} == {
        ("gpt-4o-mini", "exploit", "acme")
    }
    one = everything["rows"][7]
    got = client.get("/api/calls", params={"org": "acme", "decision": one["decision_id"]}).json()
    assert got["total"] == 1 and got["rows"][0]["event_id"] == one["event_id"]
    # Another org's decision id is not shown under this org.
    got = client.get("/api/calls", params={"org": "beta", "decision": one["decision_id"]}).json()
    assert got["total"] == 0
    for params, field in (
        ({"per_page": "0"}, "per_page"),
        ({"page": "x"}, "page"),
        ({"phase": "guess"}, "phase"),
        ({"since": "yesterday"}, "since"),
        ({"range": "1y"}, "range"),
    ):
        bad = client.get("/api/calls", params={"org": "acme", **params})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == field


def test_stats_api_is_the_bandits_view(
    client: TestClient, store: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    got = client.get("/api/stats/qa-simple", params={"org": "acme"}).json()
    assert [r["model"] for r in got] == sorted(MODELS)
    # The same view from a Tally opened on a copy of the store.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store[0], copy)
    with Tally(MODELS, fallback="gpt-4o", store=str(copy)) as tally:
        want = tally.stats("qa-simple", org="acme", quality_floor=0.8)
    by_model = {r["model"]: r for r in want}
    for row in got:
        ref = by_model[row["model"]]
        for key in ("calls", "quality_obs", "mean_quality", "confidence", "phase"):
            assert row[key] == ref[key], key
        assert row["floor"] == 0.8  # the floor the calls asked for
        if row["mean_quality"] is not None:
            assert row["quality_low"] <= row["mean_quality"] <= row["quality_high"]
    beta = client.get("/api/stats/qa-simple", params={"org": "beta"}).json()
    assert beta[0]["floor"] == 0.7
    assert sum(r["calls"] for r in beta) == 200
    assert client.get("/api/stats/no-such-task", params={"org": "acme"}).json() == []
    bad = client.get("/api/stats/BAD TASK!", params={"org": "acme"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "task_type"


def test_pages_render_and_orgs_are_isolated(
    client: TestClient, store: tuple[Path, dict[str, Any]]
) -> None:
    for path in ("/", "/tasks", "/calls", "/savings"):
        res = client.get(path, params={"org": "beta"})
        assert res.status_code == 200, path
        assert 'id="current-org">beta<' in res.text
        assert "code-debug" not in res.text  # only acme has that task type
    assert client.get("/api/orgs").json() == ["acme", "beta"]
    assert client.get("/", params={"org": "nobody"}).status_code == 404
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and b"plotly.js" in js.content[:2000]
    data = DashboardData.open(store[0])
    try:
        locked = TestClient(create_app(data, org="beta"))
        assert locked.get("/api/orgs").json() == ["beta"]
        assert locked.get("/api/report").json()["totals"]["calls"] == 200
        refused = locked.get("/api/report", params={"org": "acme"})
        assert refused.status_code == 403 and "beta" in refused.json()["error"]["message"]
    finally:
        data.close()


def _digest(where: Path) -> dict[str, str]:
    return {
        str(p.relative_to(where)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(where.rglob("*"))
        if p.is_file()
    }


def _state(where: Path) -> tuple[int, dict[Any, Any]]:
    from tally_core import DiskStore

    with DiskStore(where) as ds:
        return ds.version(), ds.load()


def test_nothing_is_written(store: tuple[Path, dict[str, Any]]) -> None:
    # The ledger byte for byte; the learned state as data (diskcache rewrites
    # its own settings in its WAL whenever a cache is opened).
    before, state = _digest(store[0]), _state(store[0])
    data = DashboardData.open(store[0])
    with TestClient(create_app(data)) as c:
        for path in ("/", "/tasks", "/calls?errors=1", "/savings", "/api/stats/code-debug"):
            assert c.get(path, params={"org": "acme"}).status_code == 200
    data.close()
    after = _digest(store[0])
    ledger_files = [k for k in before if k.startswith("ledger")]
    assert ledger_files and {k: after.get(k) for k in ledger_files} == {
        k: before[k] for k in ledger_files
    }
    assert set(after) == set(before)  # no spool, no new file
    assert _state(store[0]) == state


def test_non_loopback_bind_is_refused_without_the_flag(
    store: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    res = runner.invoke(cli_app, ["dashboard", "--store", str(store[0]), "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert "--host: 0.0.0.0 is not a loopback address" in res.output
    assert "--allow-remote" in res.output
    assert check_host("127.0.0.1", allow_remote=False) is False
    assert check_host("::1", allow_remote=False) is False
    assert check_host("0.0.0.0", allow_remote=True) is True
    ran: list[dict[str, Any]] = []
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw))
    res = runner.invoke(
        cli_app,
        ["dashboard", "--store", str(store[0]), "--host", "0.0.0.0", "--allow-remote"],
    )
    assert res.exit_code == 0, res.output
    assert ran == [{"host": "0.0.0.0", "port": 8765, "log_level": "warning"}]
    assert "WARNING: serving on 0.0.0.0, not loopback" in res.output
    res = runner.invoke(cli_app, ["dashboard", "--store", str(store[0]), "--port", "9001"])
    assert res.exit_code == 0 and ran[-1]["host"] == "127.0.0.1" and ran[-1]["port"] == 9001


def test_missing_extra_says_what_to_install(
    store: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = server.find_spec
    monkeypatch.setattr(server, "find_spec", lambda name: None if name == "plotly" else real(name))
    res = CliRunner().invoke(cli_app, ["dashboard", "--store", str(store[0])])
    assert res.exit_code == 2
    assert "missing: plotly" in res.output and "pip install 'tally-router[dashboard]'" in res.output
    monkeypatch.setattr(server, "find_spec", real)
    res = CliRunner().invoke(cli_app, ["dashboard", "--store", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no Tally store" in res.output
