"""The dashboard over a fleet: every replica's calls from the shared PostgreSQL
ledger, the learned state from the shared Redis; nothing written to either."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conftest import redis_or_skip
from tally_core import RedisStore, Tally
from tally_core.dashboard.data import DashboardData
from tests.postgres_support import PASSWORD, PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
QUALITY = {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95, "gpt-4o": 0.97}


def test_the_dashboard_reads_a_fleets_ledger_and_state(pg: PostgresServer, tmp_path: Path) -> None:
    redis = redis_or_skip()
    ledger = pg.create_db()
    prefix = f"dash-{uuid.uuid4().hex[:8]}"
    sent = {"acme": 0, "beta": 0}
    try:
        for k in range(3):  # three replicas, one ledger, one state
            store = RedisStore(f"{redis.url}?prefix={prefix}", directory=tmp_path / f"r{k}")
            with Tally(POOL, fallback="gpt-4o", store=store, ledger=ledger, seed=k,
                       background=False) as t:  # fmt: skip
                for i in range(30 + 10 * k):
                    org = "acme" if i % 3 else "beta"
                    d = t.route(task_type="qa", quality_floor=0.8, org=org)
                    t.telemetry(d, quality=QUALITY[d.model], input_tokens=200, output_tokens=40,
                                org=org)  # fmt: skip
                    sent[org] += 1
                assert t.flush(10)
        version = RedisStore(redis.url, prefix=prefix).version()

        data = DashboardData.open(ledger, state=f"{redis.url}?prefix={prefix}")
        try:
            assert data.span()["calls"] == sum(sent.values()) == 30 + 40 + 50
            assert data.orgs() == ["acme", "beta"]
            assert data.span(org="beta")["calls"] == sent["beta"]
            rows = data.stats("qa-simple", org="acme")
            assert sum(r["calls"] for r in rows) == sent["acme"]
            assert {r["model"] for r in rows} <= set(POOL) and rows[0]["floor"] == 0.8
        finally:
            data.close()
        assert RedisStore(redis.url, prefix=prefix).version() == version  # nothing learned

        # A PostgreSQL ledger alone: the call log, no learned state to show.
        alone = DashboardData.open(ledger)
        try:
            assert alone.state is None and alone.span()["calls"] == 120
            assert alone.stats("qa-simple", org="acme") == []
        finally:
            alone.close()
    finally:
        redis.stop()


def test_the_dashboard_command_takes_a_ledger_url(pg: PostgresServer, monkeypatch) -> None:
    from typer.testing import CliRunner

    from tally_core import dashboard as dash
    from tally_core.cli import app

    served: dict[str, object] = {}
    monkeypatch.setattr(dash, "require_extra", lambda: None)
    monkeypatch.setattr(dash, "serve", lambda store, **kw: served.update(store=store, **kw))
    url = pg.create_db()
    res = CliRunner().invoke(app, ["dashboard", "--store", url, "--state", "redis://c:6379/0"])
    assert res.exit_code == 0, res.output
    assert served["store"] == url and served["state"] == "redis://c:6379/0"
    missing = CliRunner().invoke(app, ["dashboard", "--store", "/nonexistent/tally"])
    assert missing.exit_code == 2 and "no Tally store" in missing.stderr
    assert PASSWORD not in missing.output
