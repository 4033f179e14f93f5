"""The Redis store as a real deployment runs it: TLS, ACL users and passwords, a key
prefix per deployment, errors that name the server and never the password, and
``tally stats`` reading a Redis store. Every test runs against a real redis-server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import RedisServer, redis_or_skip
from tally_core import InvalidFieldError, RedisStore, StoreError, Tally
from tally_core.cli import app
from tally_core.home import StoreDir
from tally_core.learning import LearnParams, Update
from tests.redis_support import tls_redis_or_skip

pytestmark = pytest.mark.redis

P = LearnParams()
POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]


def upd(model: str = "m", q: float = 1.0, task: str = "qa-simple") -> Update:
    return Update("default", task, "*", model, q, False, 100.0, 10, 0.001)


def learn(store: Any, home: Path, quality: dict[str, float], calls: int, seed: int) -> None:
    """``calls`` routed calls graded by ``quality``, learned through ``store``."""
    with Tally(POOL, fallback="gpt-4o", store=store, seed=seed, background=False,
               ledger=str(StoreDir(home).ledger)) as t:  # fmt: skip
        for _ in range(calls):
            d = t.route(task_type="qa", quality_floor=0.8)
            t.telemetry(d, quality=quality[d.model], input_tokens=300, output_tokens=60)
        assert t.flush(10)


def calls_by_model(store: RedisStore) -> dict[str, float]:
    state = store.load().get(("default", "qa-simple"))
    return {} if state is None else {m: a[11] for m, a in state["cells"]["*"].items()}


@pytest.fixture
def server() -> Any:
    s = redis_or_skip()
    yield s
    s.stop()


def admin(server: RedisServer, password: str | None = None) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=server.port, password=password)


# -- a key prefix per deployment ------------------------------------------------------


def test_two_deployments_on_one_redis_never_see_each_others_keys(server, tmp_path) -> None:
    prod = RedisStore(f"{server.url}?prefix=prod", directory=tmp_path / "p")
    staging = RedisStore(server.url, prefix="staging", directory=tmp_path / "s")
    try:
        learn(prod, tmp_path / "p", {"gpt-4o-mini": 0.95, "claude-haiku-4-5": 0.95,
                                     "gpt-4o": 0.97}, 60, 1)  # fmt: skip
        learn(staging, tmp_path / "s", {"gpt-4o-mini": 0.2, "claude-haiku-4-5": 0.3,
                                        "gpt-4o": 0.97}, 25, 2)  # fmt: skip
        assert prod.prefix == "prod" and staging.prefix == "staging"
        assert sum(calls_by_model(prod).values()) == 60
        assert sum(calls_by_model(staging).values()) == 25
        keys = sorted(k.decode() for k in admin(server).keys("*"))
        assert keys and all(k.startswith(("prod:", "staging:")) for k in keys)
        # Resetting one deployment leaves the other's learning alone.
        staging.reset()
        assert calls_by_model(staging) == {} and sum(calls_by_model(prod).values()) == 60
        assert not [k for k in admin(server).keys("staging:state:*")]
        # Tally(store=URL) takes the prefix from the URL too.
        with Tally(POOL, fallback="gpt-4o", store=f"{server.url}?prefix=prod",
                   ledger=":memory:", background=False) as again:  # fmt: skip
            assert sum(s["calls"] for s in again.stats("qa-simple")) == 60
    finally:
        prod.close()
        staging.close()


def test_a_prefix_given_twice_must_agree() -> None:
    with pytest.raises(InvalidFieldError) as err:
        RedisStore("redis://127.0.0.1:1/0?prefix=a", prefix="b")
    assert err.value.field == "prefix"
    with pytest.raises(InvalidFieldError) as err:
        RedisStore("redis://127.0.0.1:1/0?prefix=")
    assert err.value.field == "prefix"


# -- ACL users and passwords ----------------------------------------------------------

_CATS = ("+@read", "+@write", "+@transaction", "+@connection")


def test_an_acl_user_confined_to_its_prefix_runs_a_deployment(server, tmp_path) -> None:
    a = admin(server)
    a.execute_command("ACL", "SETUSER", "tally-a", "on", ">pw-a-s3cret", "~a:*", *_CATS)
    a.execute_command("ACL", "SETUSER", "reader", "on", ">pw-r-s3cret", "~a:*", "+@read")
    ok = RedisStore(f"redis://tally-a:pw-a-s3cret@127.0.0.1:{server.port}/0?prefix=a")
    assert ok.apply("b1", [upd(), upd(q=0.0)], P).applied
    assert not ok.apply("b1", [upd()], P).applied
    assert ok.load()[("default", "qa-simple")]["clock"] == 2.0
    ok.reset()
    assert ok.load() == {}
    assert "pw-a" not in repr(ok) and ok.url == f"redis://tally-a@127.0.0.1:{server.port}/0"
    ok.close()

    cases = {
        # The user may not touch another deployment's keys.
        "may not use these keys": RedisStore(
            f"redis://tally-a:pw-a-s3cret@127.0.0.1:{server.port}/0", prefix="b"),
        # A read-only user cannot learn.
        "its ACL needs ~a:*": RedisStore(
            f"redis://127.0.0.1:{server.port}/0?prefix=a", username="reader",
            password="pw-r-s3cret"),
        "authentication failed": RedisStore(
            f"redis://tally-a:wrong-s3cret@127.0.0.1:{server.port}/0", prefix="a"),
    }  # fmt: skip
    for hint, store in cases.items():
        with pytest.raises(StoreError) as err:
            store.apply("b2", [upd()], P)
        text = str(err.value)
        assert hint in text, text
        assert f"127.0.0.1:{server.port}" in text
        assert "s3cret" not in text
        store.close()


def test_a_password_only_server_and_arguments_that_override_the_url(
    server, monkeypatch
) -> None:
    admin(server).config_set("requirepass", "only-s3cret")
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        with pytest.raises(StoreError, match="authentication failed") as err:
            RedisStore(url, prefix="p").version()
        assert "s3cret" not in str(err.value)
        with RedisStore(f"redis://:only-s3cret@127.0.0.1:{server.port}/0", prefix="p") as s:
            assert s.apply("b", [upd("gpt-4o-mini")], P).applied and s.version() == 1
            assert s.url == url
        # password= wins over the URL's, so the secret can stay out of the URL.
        with RedisStore(f"redis://:stale@127.0.0.1:{server.port}/0", prefix="p",
                        password="only-s3cret") as s:  # fmt: skip
            assert s.load()[("default", "qa-simple")]["clock"] == 1.0
        # With no password given, $TALLY_REDIS_PASSWORD: the CLI keeps it out of argv.
        monkeypatch.setenv("TALLY_REDIS_PASSWORD", "only-s3cret")
        with RedisStore(url, prefix="p") as s:
            assert s.version() == 1
        res = CliRunner().invoke(app, ["stats", "qa-simple", "--store", f"{url}?prefix=p"])
        assert res.exit_code == 0 and "│ gpt-4o-mini " in res.stdout, res.output
        monkeypatch.setenv("TALLY_REDIS_PASSWORD", "wrong-s3cret")
        res = CliRunner().invoke(app, ["stats", "qa-simple", "--store", f"{url}?prefix=p"])
        assert res.exit_code == 2 and "authentication failed" in res.stderr
        assert "s3cret" not in res.stderr
    finally:
        admin(server, "only-s3cret").config_set("requirepass", "")


# -- TLS --------------------------------------------------------------------------------


def test_tls_with_a_client_certificate_learns_and_routes(tmp_path) -> None:
    server = tls_redis_or_skip(tmp_path / "tls")
    c = server.certs
    tls = {"ssl_ca_certs": c["ca_crt"], "ssl_certfile": c["client_crt"],
           "ssl_keyfile": c["client_key"]}  # fmt: skip
    try:
        store = RedisStore(server.url, prefix=f"tls-{uuid.uuid4().hex}", directory=tmp_path,
                           **tls)  # fmt: skip
        assert store.url == f"rediss://127.0.0.1:{server.port}/0"
        first = store.apply("b1", [upd("m1"), upd("m2"), upd("m1", 0.0)], P)
        again = store.apply("b1", [upd("m1")], P)
        assert first.applied and not again.applied and dict(again.starts) == dict(first.starts)
        assert calls_by_model(store) == {"m1": 2.0, "m2": 1.0}
        store.reset()
        learn(store, tmp_path, {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95,
                                "gpt-4o": 0.97}, 80, 3)  # fmt: skip
        assert sum(calls_by_model(store).values()) == 80
        store.close()
        # The same through a URL alone: redis-py reads the TLS files from its query.
        q = "&".join(f"{k}={v}" for k, v in tls.items())
        with RedisStore(f"{server.url}?prefix={store.prefix}&{q}") as by_url:
            assert sum(calls_by_model(by_url).values()) == 80
    finally:
        server.stop()


def test_tls_refusals_are_store_errors_naming_the_server(tmp_path) -> None:
    server = tls_redis_or_skip(tmp_path / "tls")
    c = server.certs
    where = f"127.0.0.1:{server.port}"
    try:
        # A CA that did not sign the server's certificate: the client refuses it.
        wrong_ca = RedisStore(server.url, ssl_ca_certs=c["other_crt"], socket_timeout_s=2)
        # No client certificate: the server (tls-auth-clients yes) refuses the client.
        no_cert = RedisStore(server.url, ssl_ca_certs=c["ca_crt"], socket_timeout_s=2)
        # Plain Redis protocol on a TLS port.
        plain = RedisStore(f"redis://{where}/0", socket_timeout_s=2)
        for store, hint in ((wrong_ca, "TLS handshake failed"), (no_cert, "ssl_certfile"),
                            (plain, "does it want TLS")):  # fmt: skip
            with pytest.raises(StoreError) as err:
                store.apply("b", [upd()], P)
            assert where in str(err.value) and hint in str(err.value), str(err.value)
            store.close()
    finally:
        server.stop()
    # Options that cannot work are refused before any connection, naming the field.
    with pytest.raises(InvalidFieldError) as err:
        RedisStore(f"redis://{where}/0", ssl_ca_certs=c["ca_crt"])
    assert err.value.field == "url" and "rediss://" in str(err.value)
    with pytest.raises(InvalidFieldError) as err:
        RedisStore(server.url, ssl_ca_certs=tmp_path / "nope.crt")
    assert err.value.field == "ssl_ca_certs"
    with pytest.raises(InvalidFieldError) as err:
        RedisStore(f"{server.url}?ssl_keyfile={tmp_path / 'nope.key'}")
    assert err.value.field == "ssl_keyfile"


# -- tally stats through the store interface --------------------------------------------


def test_tally_stats_shows_a_redis_stores_learned_state(server, tmp_path) -> None:
    prefix = f"stats-{uuid.uuid4().hex[:8]}"
    store = RedisStore(server.url, prefix=prefix, directory=tmp_path / "replica")
    learn(store, tmp_path / "replica", {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95,
                                        "gpt-4o": 0.97}, 120, 4)  # fmt: skip
    want = calls_by_model(store)
    store.close()
    home = tmp_path / "empty-home"
    runner = CliRunner()
    res = runner.invoke(app, ["stats", "qa-simple", "--store", f"{server.url}?prefix={prefix}",
                              "--floor", "0.8"], env={"TALLY_HOME": str(home)})  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in res.stdout.splitlines() if line.count("│") >= 7}  # fmt: skip
    assert {m: float(n) for m, n in rows.items() if m in POOL} == want
    assert sum(want.values()) == 120
    assert not home.exists()  # read through the store: no ledger, spool or state made

    other = runner.invoke(app, ["stats", "qa-simple", "--store", f"{server.url}?prefix=nobody"])
    assert other.exit_code == 1 and "no learned state" in other.stderr
    assert f"127.0.0.1:{server.port}" in other.stderr


def test_tally_stats_on_an_unreachable_redis_is_one_line_without_the_password(
    tmp_path,
) -> None:
    s = RedisServer()  # never started: nothing listens on its port
    res = CliRunner().invoke(
        app, ["stats", "qa-simple", "--store", f"redis://u:pw-s3cret@127.0.0.1:{s.port}/0"]
    )
    assert res.exit_code == 2
    assert f"redis://u@127.0.0.1:{s.port}/0" in res.stderr and "cannot connect" in res.stderr
    assert "s3cret" not in res.output + res.stderr


# -- the README's recipe, run --------------------------------------------------------------


def _readme_block(after: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("```", text.index(after)) + 3
    return text[text.index("\n", start) + 1 : text.index("```", start)]


def test_the_readmes_redis_conf_and_replica_settings_work(tmp_path, monkeypatch) -> None:
    """The README's redis.conf, on loopback with throwaway certificates, and a
    replica with the README's settings; the ACL keeps another prefix out."""
    probe = tls_redis_or_skip(tmp_path / "tls")  # certificates, and a TLS-capable server
    probe.stop()
    c = probe.certs
    paths = {"/etc/redis/tls/redis.crt": c["server_crt"], "/etc/redis/tls/redis.key":
             c["server_key"], "/etc/redis/tls/ca.crt": c["ca_crt"]}  # fmt: skip
    conf = []
    for line in _readme_block("**Redis** (the learned state)").splitlines():
        line = line.split("#")[0].rstrip()
        for old, new in paths.items():
            line = line.replace(old, str(new))
        if line.startswith("bind "):
            line = "bind 127.0.0.1"
        if line.startswith("tls-port "):
            line = f"tls-port {probe.port}"
        if line:
            conf.append(line)
    assert any(x.startswith("user tally-prod") for x in conf)
    (tmp_path / "redis.conf").write_text("\n".join([*conf, f"dir {tmp_path}", ""]))

    class Conf(RedisServer):
        def listen_args(self) -> list[str]:
            return [str(tmp_path / "redis.conf")]

    server = Conf()
    server.port = probe.port
    server.start()
    try:
        env = dict(line.split("=", 1) for line in _readme_block("**Each replica**").split())
        url = env["TALLY_REDIS_URL"].replace("10.0.0.5", "127.0.0.1").replace(
            ":6380", f":{probe.port}")
        monkeypatch.setenv("TALLY_REDIS_PASSWORD", "PROD-PASSWORD")
        with RedisStore(url, ssl_ca_certs=c["ca_crt"], directory=tmp_path / "r") as s:
            assert s.prefix == "myapp-prod"
            learn(s, tmp_path / "r", {"gpt-4o-mini": 0.9, "claude-haiku-4-5": 0.9,
                                      "gpt-4o": 0.9}, 30, 5)  # fmt: skip
            assert sum(calls_by_model(s).values()) == 30
        staging = url.replace("prefix=myapp-prod", "prefix=myapp-staging")
        with RedisStore(staging, ssl_ca_certs=c["ca_crt"]) as other, \
                pytest.raises(StoreError, match="may not use these keys"):  # fmt: skip
            other.apply("b", [upd()], P)
    finally:
        server.stop()
