"""The real LiteLLM proxy (``litellm --config config.yaml``) with Tally's handler, over loopback.

Needs the proxy's dependencies (``pip install "tally-router[proxy]"``); skipped
without them. The deployments answer with ``mock_response``: no provider is
called, and the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tally_core.home import StoreDir

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("fastapi", "backoff", "uvicorn", "mcp")),
    reason="the LiteLLM proxy's dependencies are not installed (the 'proxy' extra)",
)

MASTER_KEY = "sk-tally-proxy-test-6f1c2a9e4b7d8053a1c9e2f4b6d8a0c3"
CANARY = "okapi-canary-51d2"
CONFIG = """\
model_list:
  - model_name: auto
    litellm_params: {model: gpt-4o-mini, api_key: sk-test, mock_response: "from mini"}
    model_info: {id: mini}
  - model_name: auto
    litellm_params: {model: claude-haiku-4-5, api_key: sk-test, mock_response: "from haiku"}
    model_info: {id: haiku}
  - model_name: auto
    litellm_params: {model: openai/gpt-4o, api_key: sk-test, mock_response: "from 4o"}
    model_info: {id: 4o}
TALLY_HOOK
general_settings:
  master_key: MASTER_KEY
environment_variables:
  TALLY_FALLBACK: gpt-4o
""".replace("MASTER_KEY", MASTER_KEY)
MODEL_OF = {"mini": "gpt-4o-mini", "haiku": "claude-haiku-4-5", "4o": "gpt-4o"}
# The two ways a proxy config names Tally: a logger, or a routing plugin.
HOOKS = {
    "callbacks": 'litellm_settings:\n  callbacks: ["tally_litellm.proxy.handler"]',
    "plugins": 'router_settings:\n  plugins: ["tally_litellm.proxy.plugin"]',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=sorted(HOOKS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, str]]:
    """A proxy on a free loopback port; its base URL, TALLY_HOME and how the config names
    Tally. Stopped after."""
    home = tmp_path_factory.mktemp("proxy")
    (home / "config.yaml").write_text(CONFIG.replace("TALLY_HOOK", HOOKS[request.param]))
    port = _free_port()
    env = {**os.environ, "TALLY_HOME": str(home / "state"), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", "config.yaml",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the proxy exited: {(home / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the proxy did not start within 120 s")
            time.sleep(0.5)
        yield url, home, request.param
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def chat(url: str, **body: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": f"hello {CANARY}"}], **body}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == 200, r.text
    return r


def ledger_rows(home: Path, n: int) -> list[dict[str, Any]]:
    """The ledger's rows once at least ``n`` arrived (the server writes them in the background)."""
    path = StoreDir(home / "state").ledger
    deadline = time.monotonic() + 20
    while True:
        if path.exists():
            con = sqlite3.connect(path)
            con.row_factory = sqlite3.Row
            try:
                got = [dict(row) for row in con.execute("SELECT * FROM calls")]
            except sqlite3.OperationalError:
                got = []
            finally:
                con.close()
            if len(got) >= n or time.monotonic() > deadline:
                return got
        elif time.monotonic() > deadline:
            return []
        time.sleep(0.2)


def test_the_proxy_routes_through_tally_and_reports_every_call(server):
    url, home, hook = server
    meta = {"tally": {"task_type": "qa-simple"}}
    plain = [chat(url, metadata=meta) for _ in range(3)]
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
             for n in ("search", "fetch")]
    stream = chat(url, stream=True, tools=tools, metadata={"tally": {"task_type": "code-debug"}})
    bad = chat(url, metadata={"tally": {"task_type": "qa", "colour": "red"}})

    for r in plain:
        served = r.headers["x-litellm-model-id"]
        assert r.headers["x-tally-model"] == MODEL_OF[served]
        assert r.json()["choices"][0]["message"]["content"] == f"from {served}"
    assert stream.headers["x-tally-model"] == MODEL_OF[stream.headers["x-litellm-model-id"]]
    assert "data:" in stream.text
    # A bad envelope fails open to the fallback: the call still succeeds.
    assert bad.headers["x-litellm-model-id"] == "4o"
    assert json.loads(bad.text)["choices"][0]["message"]["content"] == "from 4o"

    rows = {row["decision_id"]: row for row in ledger_rows(home, 5) if row["decision_id"]}
    for r in [*plain, stream]:
        row = rows[r.headers["x-tally-decision-id"]]
        assert row["model"] == r.headers["x-tally-model"] and row["success"] == 1
    streamed = rows[stream.headers["x-tally-decision-id"]]
    # A routing plugin sees no tools (LiteLLM's RoutingContext carries none): documented.
    tools_seen = 2 if hook == "callbacks" else 0
    assert (streamed["task_type"], streamed["tools_used"]) == ("code-debug", tools_seen)
    assert len(ledger_rows(home, 5)) == 5  # the fail-open call is reported too
    for path in (home / "state").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
