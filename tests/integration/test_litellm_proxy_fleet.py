"""The proxy handler's fleet settings: TALLY_STORE (shared learned state, a real
redis-server) and TALLY_LEDGER (shared call log, a real PostgreSQL), read when the
handler builds its Tally; bad values fail the set-up naming the variable, never a
password, and the proxy keeps serving (LiteLLM routes)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tally_core import InvalidFieldError, StoreError
from tally_core.ledger.postgres import PostgresLedger
from tally_core.stores.redis_store import RedisStore
from tally_litellm import get_decision
from tally_litellm.proxy import TallyProxyHandler
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    litellm_callbacks_restored,
    served_id,
    train,
)
from tests.integration.test_litellm_proxy import MODEL_OF, acall, proxy, proxy_like_router
from tests.postgres_support import PASSWORD, PostgresServer, free_port

N = 6
SECRET = "hunter2-not-real"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TALLY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _replica(**kw: Any) -> TallyProxyHandler:
    """A second proxy replica: its handler, bound to a router of its own."""
    h = TallyProxyHandler(**{"fallback": "gpt-4o", "seed": 8, **kw})
    h.bind(proxy_like_router())
    return h


def _fleet(
    monkeypatch: pytest.MonkeyPatch, home_b: Path
) -> tuple[list[str], TallyProxyHandler]:
    """Replica A serves N calls and learns code-debug; replica B (its own TALLY_HOME,
    as on another machine) is built while A runs. Returns A's decision ids and B
    (open: the caller closes it)."""
    with proxy(monkeypatch=monkeypatch, store=None) as (router, a):
        ids = []
        for _ in range(N):
            r = acall(router, a)
            assert MODEL_OF[served_id(r)] == get_decision(r)["model"]
            ids.append(get_decision(r)["decision_id"])
        assert a.tally is not None
        train(a.tally, "code-debug", {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95,
                                      "gpt-4o": 0.97})
        assert a.flush(10.0)
        monkeypatch.setenv("TALLY_HOME", str(home_b))
        b = _replica()
        return ids, b


def test_tally_store_shares_the_learned_state_through_redis(
    redis_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"proxy-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TALLY_STORE", f"{redis_url}?prefix={prefix}")
    ids, b = _fleet(monkeypatch, home.parent / "home-b")
    try:
        assert b.tally is not None
        store = b.tally.store
        assert isinstance(store, RedisStore) and store.prefix == prefix
        qa = {s["model"]: s["calls"] for s in b.tally.stats("qa-simple")}
        assert sum(qa.values()) == N  # A's calls, learned once, seen by B
        debug = {s["model"]: s for s in b.tally.stats("code-debug")}
        assert debug["gpt-4o-mini"]["calls"] == 30
        assert debug["gpt-4o-mini"]["mean_quality"] == pytest.approx(0.3, abs=0.05)
        served = [b.tally.route(task_type="code-debug", quality_floor=0.8).model
                  for _ in range(20)]
        assert "gpt-4o-mini" not in served  # B routes on what A learned
        # Without TALLY_LEDGER each replica keeps its own SQLite ledger in its TALLY_HOME:
        # B's holds none of A's calls.
        assert Path(b.tally.ledger.path).parent == home.parent / "home-b"
        assert b.tally.ledger.count() == 0
    finally:
        b.close()
    assert len((home / "ledger.sqlite3").read_bytes()) > 0


def test_tally_ledger_puts_every_replicas_calls_in_postgresql(
    redis_url: str, pg: PostgresServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_STORE", f"{redis_url}?prefix=proxy-{uuid.uuid4().hex[:8]}")
    url = pg.create_db()
    assert PASSWORD in url
    monkeypatch.setenv("TALLY_LEDGER", url)
    ids, b = _fleet(monkeypatch, home.parent / "home-b")
    try:
        assert b.tally is not None
        ledger = b.tally.ledger
        assert isinstance(ledger, PostgresLedger) and PASSWORD not in ledger.path
        got = [r for r in ledger.rows() if r["decision_id"]]
        assert sorted(r["decision_id"] for r in got) == sorted(ids)
        assert all(r["task_type"] == "qa-simple" and r["cost_usd"] > 0 for r in got)
        d = b.tally.route(task_type="qa-simple")
        b.tally.telemetry(d, quality=0.9, input_tokens=10, output_tokens=20)
        assert b.flush(10.0)
    finally:
        b.close()
    # After both replicas closed: one call log with both replicas' calls, and no
    # replica wrote a SQLite ledger of its own.
    shared = PostgresLedger(url, readonly=True)
    try:
        assert shared.count() == N + 3 * 30 + 1  # A's calls, A's training, B's call
    finally:
        shared.close()
    assert not list(home.parent.rglob("*.sqlite3"))


def _bind_error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> Exception:
    monkeypatch.setenv(name, value)
    h = TallyProxyHandler(fallback="gpt-4o")
    try:
        with pytest.raises((InvalidFieldError, StoreError)) as info:
            h.bind(proxy_like_router())
        assert h.state is None
        return info.value
    finally:
        h.close()


@pytest.mark.parametrize(("name", "value", "says"), [
    ("TALLY_STORE", f"postgresql://tally:{SECRET}@db/tally", "is no state store"),
    ("TALLY_STORE", f"redis://tally:{SECRET}@cache:6379/0?prefix=", "prefix: must be a non-empty"),
    ("TALLY_STORE", f"rediss://:{SECRET}@cache:6380/0?ssl_ca_certs=/no/ca.pem",
     "ssl_ca_certs: no such file"),
    ("TALLY_STORE", f"redis://:{SECRET}@cache:99999/0", "Port out of range"),
    ("TALLY_LEDGER", f"redis://tally:{SECRET}@cache:6379/0",
     "must be a file path or a postgresql:// URL"),
], ids=["store-postgres", "store-prefix", "store-tls-file", "store-port", "ledger-redis"])
def test_a_bad_value_names_the_variable_and_hides_the_password(
    home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    exc = _bind_error(monkeypatch, name, value)
    assert isinstance(exc, InvalidFieldError) and exc.field == name
    assert says in str(exc) and SECRET not in str(exc)
    assert not list(home.rglob("*.sqlite3"))  # nothing opened is left behind as a ledger


def test_an_unreachable_ledger_names_the_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://tally:{SECRET}@127.0.0.1:{free_port()}/tally"
    exc = _bind_error(monkeypatch, "TALLY_LEDGER", url)
    assert isinstance(exc, StoreError) and not isinstance(exc, InvalidFieldError)
    assert str(exc).startswith("TALLY_LEDGER=postgresql://tally@127.0.0.1:")
    assert "unreachable" in str(exc) and SECRET not in str(exc)


def test_the_proxy_fails_open_on_a_bad_setting(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TALLY_STORE", f"http://tally:{SECRET}@cache/")
    with proxy(monkeypatch=monkeypatch, store=None) as (router, handler):
        r = acall(router, handler)
        assert not isinstance(r, Exception) and get_decision(r) is None  # LiteLLM routed
        assert handler.state is None and handler.errors.get("bind") == 1
    assert "TALLY_STORE" in caplog.text and SECRET not in caplog.text


def test_the_arguments_win_over_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_STORE", "http://nowhere/")
    monkeypatch.setenv("TALLY_LEDGER", "redis://nowhere/0")
    h = _replica(store=":memory:", ledger=":memory:")
    try:
        assert h.tally is not None and h.tally.store.directory is None
        assert h.tally.ledger.path == ":memory:"
    finally:
        h.close()
