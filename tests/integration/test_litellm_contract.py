"""What every LiteLLM mode promises, on the LiteLLM installed (CI runs this on the oldest
supported release and on the newest): the decision is on every response, plain or streamed,
sync or async; ``tally.flush()`` right after the calls has applied every one of them; the
proxy binds each request's org to the authenticated caller.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from typing import Any

import litellm
import pytest
from litellm.types.router import RouterGeneralSettings

from tally_core import Tally
from tally_litellm import TallyStrategy, get_decision
from tally_litellm.proxy import TallyProxyHandler
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    POOL,
    litellm_callbacks_restored,
    pool_deployments,
    served_id,
)

TASK = "qa-simple"
META = {"tally": {"task_type": TASK}}
N = 6


def calls_in_stats(tally: Tally, org: str = "default") -> int:
    return sum(s["calls"] for s in tally.stats(TASK, org=org))


def check_decision(response: Any) -> dict[str, Any]:
    info = get_decision(response)
    assert info is not None
    assert info["model"] in POOL and info["decision_id"] and info["routed_by"] == "tally"
    assert info["deployment_id"] == served_id(response)
    headers = response._hidden_params["additional_headers"]
    assert headers["x-tally-decision-id"] == info["decision_id"]
    assert headers["x-tally-model"] == info["model"]
    return info


def sync_calls(router: Any, stream: bool) -> list[Any]:
    out = []
    for _ in range(N):
        r = router.completion(model="auto", messages=MSGS, stream=stream, metadata=dict(META))
        if stream:
            for _chunk in r:
                pass
        out.append(r)
    return out


async def async_calls(router: Any, stream: bool) -> list[Any]:
    out = []
    for _ in range(N):
        r = await router.acompletion(model="auto", messages=MSGS, stream=stream,
                                     metadata=dict(META))
        if stream:
            async for _chunk in r:
                pass
        out.append(r)
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_strategy_sync_decision_on_every_response_and_flush_sees_every_call(stream):
    router = litellm.Router(model_list=pool_deployments(), num_retries=0)
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3) as tally:
        strategy = TallyStrategy(tally).install(router)
        try:
            responses = sync_calls(router, stream)
            assert tally.flush(10.0)  # no sleep: flush waits for LiteLLM's logging threads
            assert calls_in_stats(tally) == N
            ids = {check_decision(r)["decision_id"] for r in responses}
            assert len(ids) == N
            assert {row["decision_id"] for row in tally.ledger.rows()} == ids
        finally:
            strategy.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("mode", ["strategy", "plugin"])
def test_async_decision_on_every_response_and_flush_sees_every_call(mode, stream):
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3) as tally:
        strategy = TallyStrategy(tally)
        plugins = [strategy.as_plugin()] if mode == "plugin" else None
        router = litellm.Router(model_list=pool_deployments(), num_retries=0, plugins=plugins)
        strategy.install(router)
        assert strategy.mode == mode

        async def go() -> tuple[list[Any], bool]:
            responses = await async_calls(router, stream)
            return responses, await tally.aflush(10.0)

        try:
            responses, flushed = asyncio.run(go())
            assert flushed
            assert calls_in_stats(tally) == N
            ids = {check_decision(r)["decision_id"] for r in responses}
            assert len(ids) == N
        finally:
            strategy.close()


# -- the proxy ------------------------------------------------------------------------------


def proxy_router(plugins: list[Any] | None = None) -> Any:
    """A Router made as the proxy's config loader makes it."""
    return litellm.Router(
        model_list=pool_deployments(),
        router_general_settings=RouterGeneralSettings(async_only_mode=True),
        ignore_invalid_deployments=True,
        num_retries=0,
        plugins=plugins,
    )


def as_proxy(monkeypatch: pytest.MonkeyPatch, router: Any) -> None:
    monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server",
                        types.SimpleNamespace(llm_router=router))


def authed(team: str | None, key_hash: str, **tally_fields: Any) -> dict[str, Any]:
    """Request metadata as the proxy's auth leaves it, plus the client's envelope."""
    md: dict[str, Any] = {"user_api_key_hash": key_hash, "tally": {"task_type": TASK,
                                                                   **tally_fields}}
    if team is not None:
        md["user_api_key_team_id"] = team
    return md


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("config", ["callbacks", "router_settings.plugins"])
def test_proxy_decision_headers_and_flush_in_both_configs(monkeypatch, config, stream):
    handler = TallyProxyHandler(fallback="gpt-4o", store=":memory:", seed=3)
    if config == "callbacks":
        router = proxy_router()
        litellm.callbacks.append(handler)  # as litellm_settings.callbacks puts it
    else:
        router = proxy_router(plugins=[handler.as_plugin()])  # as router_settings.plugins does
    as_proxy(monkeypatch, router)

    async def go() -> list[dict[str, str] | None]:
        out = []
        for _ in range(N):
            data = {"metadata": authed("team-a", "hash-a")}
            r = await router.acompletion(model="auto", messages=MSGS, stream=stream, **data)
            if stream:
                async for _chunk in r:
                    pass
            out.append(await handler.async_post_call_response_headers_hook(
                data=data, user_api_key_dict=None, response=r))
        assert await handler.aflush(10.0)
        return out

    try:
        headers = asyncio.run(go())
        assert handler.state is not None
        assert handler.mode == ("hooks" if config == "callbacks" else "plugin")
        tally = handler.state.tally
        assert calls_in_stats(tally, org="team-a") == N
        ids = [h["x-tally-decision-id"] for h in headers if h]
        assert len(set(ids)) == N
        assert all(h and h["x-tally-model"] in POOL and h["x-tally-phase"] for h in headers)
        assert {row["decision_id"] for row in tally.ledger.rows()} == set(ids)
    finally:
        handler.close()


def test_a_team_key_cannot_write_into_another_teams_state(monkeypatch, caplog):
    handler = TallyProxyHandler(fallback="gpt-4o", store=":memory:", seed=3)
    router = proxy_router()
    litellm.callbacks.append(handler)
    as_proxy(monkeypatch, router)

    async def go() -> None:
        # team A's key claims team B's org; a key without a team is its own org.
        for _ in range(4):
            await router.acompletion(model="auto", messages=MSGS,
                                     metadata=authed("team-a", "hash-a", org="team-b"))
        await router.acompletion(model="auto", messages=MSGS,
                                 metadata=authed(None, "hash-solo"))
        assert await handler.aflush(10.0)

    try:
        with caplog.at_level(logging.WARNING, logger="tally.litellm"):
            asyncio.run(go())
        assert handler.state is not None
        tally = handler.state.tally
        assert calls_in_stats(tally, org="team-b") == 0
        assert calls_in_stats(tally, org="team-a") == 4
        assert calls_in_stats(tally, org="hash-solo") == 1
        assert sorted(row["org"] for row in tally.ledger.rows()) == ["hash-solo"] + ["team-a"] * 4
        assert caplog.text.count("asked for org") == 1  # logged once, counted after
        assert handler.errors["client-org"] == 4
    finally:
        handler.close()


def test_a_trusting_proxy_may_let_clients_choose_the_org(monkeypatch):
    handler = TallyProxyHandler(fallback="gpt-4o", store=":memory:", seed=3,
                                allow_client_org=True)
    router = proxy_router()
    litellm.callbacks.append(handler)
    as_proxy(monkeypatch, router)

    async def go() -> None:
        await router.acompletion(model="auto", messages=MSGS,
                                 metadata=authed("team-a", "hash-a", org="team-b"))
        assert await handler.aflush(10.0)

    try:
        asyncio.run(go())
        assert handler.state is not None
        assert calls_in_stats(handler.state.tally, org="team-b") == 1
    finally:
        handler.close()


# -- compliance -----------------------------------------------------------------------------


def test_an_orgs_rules_hold_through_the_router_and_never_fail_open_to_a_forbidden_model():
    rules = {"eu-team": {"allowed_providers": ["anthropic"]}}
    router = litellm.Router(model_list=pool_deployments(), num_retries=0)
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3, org_policies=rules) as tally:
        strategy = TallyStrategy(tally).install(router)
        try:
            eu = {"tally": {"task_type": TASK, "org": "eu-team"}}
            served = {get_decision(router.completion(model="auto", messages=MSGS,
                                                     metadata=dict(eu)))["model"]
                      for _ in range(20)}
            assert served == {"claude-haiku-4-5"}
            # A call the rules leave nothing for is refused, naming the org and the rule,
            # rather than sent to the (forbidden) fallback.
            openai_only = {"tally": {"task_type": TASK, "org": "eu-team",
                                     "allowed_providers": ["openai"]}}
            with pytest.raises(Exception, match="eu-team") as err:
                router.completion(model="auto", messages=MSGS, metadata=openai_only)
            assert "allowed_providers" in str(err.value)
        finally:
            strategy.close()
