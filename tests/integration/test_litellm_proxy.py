"""tally_litellm.proxy: the handler the LiteLLM proxy loads from config.yaml, on real Routers.

No server here (see test_litellm_proxy_server.py): the router is built the
way the proxy builds it (``async_only_mode``), the handler sits in
``litellm.callbacks`` as the proxy's config loader puts it, and the running
proxy is stood for by a ``litellm.proxy.proxy_server`` module holding the
router, which is where the handler looks for it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import RouterGeneralSettings

import tally_litellm.proxy
from tally_litellm import get_decision
from tally_litellm.proxy import TallyProxyHandler
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    dep,
    litellm_callbacks_restored,
    pool_deployments,
    served_id,
    train,
)

MODEL_OF = {"mini": "gpt-4o-mini", "haiku": "claude-haiku-4-5", "4o": "gpt-4o"}
QA = {"tally": {"task_type": "qa-simple"}}
CHEAP_IS_GOOD = {"gpt-4o-mini": 0.95, "claude-haiku-4-5": 0.95, "gpt-4o": 0.95}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("search", "fetch")]


def proxy_like_router(model_list: list[dict[str, Any]] | None = None, **kw: Any) -> Any:
    """A Router made as ``ProxyConfig.load_config`` makes it."""
    return litellm.Router(
        model_list=model_list or pool_deployments(),
        router_general_settings=RouterGeneralSettings(async_only_mode=True),
        ignore_invalid_deployments=True,
        **{"num_retries": 0, **kw},
    )


@contextmanager
def proxy(
    model_list: list[dict[str, Any]] | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
    router_kwargs: dict[str, Any] | None = None,
    **handler_kwargs: Any,
) -> Iterator[tuple[Any, TallyProxyHandler]]:
    """A proxy-made router, visible where the handler looks, and a handler in the callbacks."""
    router = proxy_like_router(model_list, **(router_kwargs or {}))
    handler = TallyProxyHandler(**{"fallback": "gpt-4o", "store": ":memory:", "seed": 7,
                                   **handler_kwargs})
    assert monkeypatch is not None
    monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server",
                        types.SimpleNamespace(llm_router=router))
    litellm.callbacks.append(handler)
    try:
        yield router, handler
    finally:
        handler.close()
        litellm.callbacks[:] = [cb for cb in litellm.callbacks if cb is not handler]


def acall(router: Any, handler: TallyProxyHandler, stream: bool = False, **kw: Any) -> Any:
    """One proxied ``acompletion`` (stream consumed), telemetry flushed; response or exception."""
    kw.setdefault("metadata", dict(QA))
    kw.setdefault("messages", MSGS)

    async def go() -> Any:
        try:
            r = await router.acompletion(model="auto", stream=stream, **kw)
            if stream:
                text = "".join([c.choices[0].delta.content or "" async for c in r])
            else:
                text = r.choices[0].message.content
            assert text == f"from {served_id(r)}"
            return r
        except Exception as exc:
            return exc
        finally:
            assert await handler.aflush()

    return asyncio.run(go())


def rows(handler: TallyProxyHandler) -> list[dict[str, Any]]:
    assert handler.state is not None
    return [row for row in handler.state.tally.ledger.rows() if row["decision_id"]]


def spy_route(monkeypatch: pytest.MonkeyPatch, handler: TallyProxyHandler) -> list[Any]:
    assert handler.state is not None
    tally = handler.state.tally
    seen: list[Any] = []
    real = tally.route

    def route(envelope: Any = None, **fields: Any) -> Any:
        d = real(envelope, **fields)
        seen.append((dict(envelope), d))
        return d

    monkeypatch.setattr(tally, "route", route)
    return seen


def test_config_yaml_names_a_logger_that_litellm_can_load():
    from litellm.proxy.types_utils.utils import get_instance_fn  # what config loading calls

    loaded = get_instance_fn("tally_litellm.proxy.handler")
    assert loaded is tally_litellm.proxy.handler
    assert isinstance(loaded, CustomLogger)
    assert loaded.state is None  # nothing is built before the proxy's first request


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_proxy_calls_go_where_tally_says_and_are_reported(monkeypatch, stream):
    with proxy(monkeypatch=monkeypatch) as (router, handler):
        responses = [acall(router, handler, stream) for _ in range(5)]
        strategy = handler.state
        assert strategy is not None and strategy.router is router and strategy.mode == "hooks"
        got = {row["decision_id"]: row for row in rows(handler)}
        assert len(got) == 5
        for r in responses:
            info = get_decision(r)
            assert info["model"] == MODEL_OF[served_id(r)] and info["routed_by"] == "tally"
            headers = r._hidden_params["additional_headers"]  # what the proxy sends back
            assert headers["x-tally-decision-id"] == info["decision_id"]
            assert headers["x-tally-model"] == info["model"]
            row = got[info["decision_id"]]
            assert (row["model"], row["success"], row["task_type"]) == (
                info["model"], 1, "qa-simple")
            assert row["input_tokens"] > 0 and row["cost_usd"] > 0
        assert strategy.errors == {}


def test_the_envelope_is_read_off_the_whole_request(monkeypatch):
    # TALLY_INFER=0: the shape is read, the task type stays the configured one.
    monkeypatch.setenv("TALLY_INFER", "0")
    with proxy(monkeypatch=monkeypatch, task_type="extraction") as (router, handler):
        acall(router, handler)  # binds
        seen = spy_route(monkeypatch, handler)
        # _skip_mcp_handler: this LiteLLM imports the optional `mcp` package for any
        # call with tools (see test_litellm_routing.py); the proxy's extra installs it.
        r = acall(router, handler, tools=TOOLS, _skip_mcp_handler=True,
                  response_format={"type": "json_object"}, metadata={})
        env, decision = seen[-1]
        assert (env["tools_used"], env["structure_type"], env["context_length"]) == (
            2, "json", "short")
        assert decision.task_type == "extraction" and get_decision(r)["inferred"] == []
        assert "complexity" not in env


def test_the_proxy_infers_the_task_type_unless_told_not_to(monkeypatch):
    translate = [{"role": "user", "content": "Translate 'see you tomorrow' into Spanish."}]
    with proxy(monkeypatch=monkeypatch, task_type="extraction") as (router, handler):
        acall(router, handler)  # binds
        seen = spy_route(monkeypatch, handler)
        r = acall(router, handler, messages=translate, metadata={})
        env, _ = seen[-1]
        info = get_decision(r)
        assert (info["task_type"], info["inferred"]) == ("translation", ["task_type", "complexity"])
        assert env["complexity"] == "low"
        # A field the client gives wins over the inferred one.
        r = acall(router, handler, messages=translate, metadata={"tally": {"task_type": "qa"}})
        info = get_decision(r)
        assert (info["task_type"], info["inferred"]) == ("qa-simple", ["complexity"])


def test_learning_moves_proxy_traffic(monkeypatch):
    with proxy(monkeypatch=monkeypatch) as (router, handler):
        acall(router, handler)
        assert handler.state is not None
        train(handler.state.tally, "code-debug",
              {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95, "gpt-4o": 0.97})
        meta = {"tally": {"task_type": "code-debug", "quality_floor": 0.8}}
        served = [served_id(acall(router, handler, metadata=dict(meta))) for _ in range(10)]
        assert "mini" not in served and served.count("haiku") >= 8


def test_retry_and_fallback_hops_are_reported(monkeypatch):
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   dep("claude-haiku-4-5", "haiku", reply="litellm.RateLimitError"),
                   dep("openai/gpt-4.1", "b1", "backup")]
    with proxy(deployments, monkeypatch, model_group="auto",  # the pool: group "auto"
               router_kwargs={"num_retries": 1, "fallbacks": [{"auto": ["backup"]}]}) as (
        router, handler,
    ):
        r = acall(router, handler)
        assert not isinstance(r, Exception), r
        assert served_id(r) == "b1"
        info = get_decision(r)
        assert (info["model"], info["routed_by"]) == ("gpt-4.1", "litellm")
        got = sorted((row["model"], row["success"], row["error"]) for row in rows(handler))
        assert got == [("claude-haiku-4-5", 0, "RateLimitError"),
                       ("gpt-4.1", 1, None),
                       ("gpt-4o-mini", 0, "InternalServerError")]


def test_deployments_litellm_cooled_down_are_not_offered(monkeypatch):
    with proxy(monkeypatch=monkeypatch,
               router_kwargs={"allowed_fails": 0, "cooldown_time": 60}) as (router, handler):
        pin = {"tally": {"task_type": "qa-simple", "allowed_models": ["gpt-4o-mini"]}}
        assert isinstance(acall(router, handler, mock_response="litellm.InternalServerError",
                                metadata=pin), Exception)
        assert handler.state is not None
        train(handler.state.tally, "qa-simple", CHEAP_IS_GOOD)
        seen = spy_route(monkeypatch, handler)
        served = [served_id(acall(router, handler)) for _ in range(5)]
        assert "mini" not in served
        assert all("gpt-4o-mini" not in env["allowed_models"] for env, _ in seen)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TALLY_FALLBACK", "claude-haiku-4-5")
    monkeypatch.setenv("TALLY_TASK_TYPE", "summarization")
    monkeypatch.setenv("TALLY_QUALITY_FLOOR", "0.85")
    with proxy(monkeypatch=monkeypatch, fallback=None) as (router, handler):
        acall(router, handler, metadata={})
        strategy = handler.state
        assert strategy is not None
        assert strategy.tally.fallback == "claude-haiku-4-5"
        assert strategy.task_type == "summarisation"
        assert strategy.default_envelope["quality_floor"] == 0.85
        assert strategy.tally.catalog.names == ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]


def test_a_new_proxy_router_keeps_the_same_tally(monkeypatch):
    with proxy(monkeypatch=monkeypatch) as (router, handler):
        acall(router, handler)
        first = handler.state
        assert first is not None
        tally = first.tally
        other = proxy_like_router()
        monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server",
                            types.SimpleNamespace(llm_router=other))
        r = acall(other, handler)
        assert handler.state is first and first.router is other and first.tally is tally
        assert get_decision(r)["routed_by"] == "tally"
        assert sum(1 for cb in litellm.callbacks if cb is handler) == 1


# -- fail open -------------------------------------------------------------------


def test_bad_envelope_fails_open_to_the_fallback_and_logs_once(monkeypatch, caplog):
    with proxy(monkeypatch=monkeypatch) as (router, handler), caplog.at_level(
        logging.DEBUG, logger="tally.litellm"
    ):
        for _ in range(3):
            r = acall(router, handler, metadata={"tally": {"task_type": "qa", "colour": "red"}})
            assert served_id(r) == "4o"
            assert get_decision(r)["routed_by"] == "fail-open"
        warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "colour" in warnings[0].getMessage()
        assert handler.state is not None and handler.state.errors == {"route": 3}
        assert [row["model"] for row in handler.state.tally.ledger.rows()] == ["gpt-4o"] * 3


def test_a_closed_tally_fails_open(monkeypatch):
    with proxy(monkeypatch=monkeypatch) as (router, handler):
        acall(router, handler)
        assert handler.state is not None
        handler.state.tally.close()
        r = acall(router, handler)
        assert served_id(r) == "4o" and get_decision(r)["routed_by"] == "fail-open"
        assert handler.state.errors["route"] == 1
        assert handler.state.errors["telemetry"] == 1  # reported, not raised


def test_when_no_tally_can_be_built_litellm_routes_every_call(monkeypatch, caplog):
    unknown = [dep("openai/mystery-model", "m1"), dep("openai/mystery-model-2", "m2")]
    with proxy(unknown, monkeypatch) as (router, handler), caplog.at_level(
        logging.WARNING, logger="tally.litellm"
    ):
        for _ in range(2):
            r = acall(router, handler)
            assert served_id(r) in ("m1", "m2") and get_decision(r) is None
        assert handler.state is None
        assert caplog.text.count("could not set up routing") == 1


def test_outside_the_proxy_the_handler_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "litellm.proxy.proxy_server", raising=False)
    handler = TallyProxyHandler(store=":memory:")
    litellm.callbacks.append(handler)
    try:
        router = proxy_like_router()
        r = asyncio.run(router.acompletion(model="auto", messages=MSGS))
        assert get_decision(r) is None and handler.state is None
    finally:
        litellm.callbacks[:] = [cb for cb in litellm.callbacks if cb is not handler]
