"""TallyStrategy on a real litellm.Router: who serves, the envelope, fail-open, setup."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

import litellm
import pytest

from tally_core import Tally
from tally_litellm import DECISION_KEY, TallyStrategy, get_decision, pool_from_router
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    POOL,
    dep,
    installed,
    litellm_callbacks_restored,
    make_router,
    pool_deployments,
    rows,
    served_id,
    train,
)

MODEL_OF = {"mini": "gpt-4o-mini", "haiku": "claude-haiku-4-5", "4o": "gpt-4o"}


def call(
    router: Any, strategy: TallyStrategy, mode: str, stream: bool, **kw: Any
) -> tuple[Any, str]:
    """One completion through the router; returns the response and its text, telemetry flushed."""
    if mode == "sync":
        r = router.completion(model="auto", messages=MSGS, stream=stream, **kw)
        text = (
            "".join(c.choices[0].delta.content or "" for c in r)
            if stream
            else r.choices[0].message.content
        )
        assert strategy.flush()
        return r, text

    async def go() -> tuple[Any, str]:
        r = await router.acompletion(model="auto", messages=MSGS, stream=stream, **kw)
        if stream:
            text = "".join([c.choices[0].delta.content or "" async for c in r])
        else:
            text = r.choices[0].message.content
        assert await strategy.aflush()
        return r, text

    return asyncio.run(go())


def spy_route(monkeypatch: pytest.MonkeyPatch, tally: Tally) -> list[Any]:
    """Record every (envelope, decision) Tally.route sees and returns."""
    seen: list[Any] = []
    real = tally.route

    def route(envelope: Any = None, **fields: Any) -> Any:
        d = real(envelope, **fields)
        seen.append((dict(envelope), d))
        return d

    monkeypatch.setattr(tally, "route", route)
    return seen


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_served_deployment_is_tallys_choice(monkeypatch, mode, stream):
    with installed() as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        for _ in range(6):
            r, text = call(router, strategy, mode, stream,
                           metadata={"tally": {"task_type": "qa-simple"}})
            decision = seen[-1][1]
            assert MODEL_OF[served_id(r)] == decision.model
            assert text == f"from {served_id(r)}"
            info = get_decision(r)
            assert info is not None
            assert info["decision_id"] == decision.decision_id
            assert info["model"] == decision.model and info["phase"] == decision.phase
            assert info["routed_by"] == "tally"
            headers = r._hidden_params["additional_headers"]
            assert headers["x-tally-decision-id"] == decision.decision_id
            assert headers["x-tally-model"] == decision.model
        assert len(seen) == 6
        assert strategy.errors == {}


def test_routing_follows_what_tally_learned():
    with installed() as (router, tally, strategy):
        # Only haiku clears 0.8 for code-debug; mini is cheaper but fails it.
        train(tally, "code-debug", {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95, "gpt-4o": 0.97})
        served = [
            served_id(router.completion(
                model="auto", messages=MSGS,
                metadata={"tally": {"task_type": "code-debug", "quality_floor": 0.8}},
            ))
            for _ in range(10)
        ]
        strategy.flush()
        assert "mini" not in served  # the floor is a hard constraint
        assert served.count("haiku") >= 8


def test_allowed_models_in_metadata_pin_the_deployment():
    with installed() as (router, tally, strategy):
        for model, did in (("claude-haiku-4-5", "haiku"), ("gpt-4o", "4o")):
            pin = {"task_type": "qa", "allowed_models": [model]}
            r = router.completion(model="auto", messages=MSGS, metadata={"tally": pin})
            assert served_id(r) == did
        strategy.flush()


def test_decision_is_in_the_callers_metadata_even_when_the_call_fails():
    model_list = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError")]
    with installed(model_list) as (router, tally, strategy):
        md: dict[str, Any] = {"tally": {"task_type": "qa-simple"}}
        with pytest.raises(litellm.InternalServerError):
            router.completion(model="auto", messages=MSGS, metadata=md)
        assert md[DECISION_KEY]["model"] == "gpt-4o-mini"
        assert md[DECISION_KEY]["decision_id"]
        strategy.flush()


def test_only_models_the_group_serves_are_candidates(monkeypatch):
    # The pool has three models; group "small" deploys only two of them.
    model_list = [dep("gpt-4o-mini", "mini", "small"), dep("claude-haiku-4-5", "haiku", "small"),
                  *pool_deployments()]
    with installed(model_list) as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        for _ in range(8):
            r = router.completion(model="small", messages=MSGS)
            assert served_id(r) in ("mini", "haiku")
        assert all(env["allowed_models"] == ("gpt-4o-mini", "claude-haiku-4-5")
                   for env, _ in seen)
        strategy.flush()


# -- the envelope ----------------------------------------------------------------


def test_envelope_is_inferred_from_the_request(monkeypatch):
    # infer=False: the shape (tools, format, size) is read, the task type stays the default.
    with installed(task_type="extraction", infer=False) as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
                 for n in ("search", "fetch")]
        # _skip_mcp_handler: this LiteLLM imports the optional `mcp` package for any
        # call with tools; the mock provider needs none of it.
        router.completion(model="auto", messages=MSGS, tools=tools, _skip_mcp_handler=True,
                          response_format={"type": "json_object"})
        env, decision = seen[-1]
        assert env["task_type"] == "extraction"
        assert env["tools_used"] == 2
        assert env["structure_type"] == "json"
        assert env["context_length"] == "short"
        assert decision.task_type == "extraction"
        assert "complexity" not in env

        long_msgs = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 2000}]
        router.completion(model="auto", messages=long_msgs)
        env, _ = seen[-1]
        assert env["context_length"] == litellm.token_counter(messages=long_msgs)
        assert "tools_used" not in env and "structure_type" not in env
        strategy.flush()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tools_used_is_inferred_in_every_path(monkeypatch, mode, stream):
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    with installed() as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        r, text = call(router, strategy, mode, stream, tools=tools, _skip_mcp_handler=True)
        assert text == f"from {served_id(r)}"
        env, decision = seen[-1]
        assert env["tools_used"] == 1
        (row,) = rows(tally)
        assert (row["tools_used"], row["model"]) == (1, decision.model)


@pytest.mark.skipif(importlib.util.find_spec("mcp") is None,
                    reason="this LiteLLM needs the optional `mcp` package for any call with tools")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tools_call_as_a_user_writes_it(monkeypatch, mode):
    # No private flag: LiteLLM's own MCP check runs (it imports `mcp`).
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    with installed() as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        r, _ = call(router, strategy, mode, False, tools=tools)
        assert seen[-1][0]["tools_used"] == 1
        assert get_decision(r)["routed_by"] == "tally"


def test_metadata_envelope_wins_over_inference_and_defaults(monkeypatch):
    defaults = {"quality_floor": 0.7, "org": "acme", "structure_type": "code"}
    with installed(default_envelope=defaults) as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        router.completion(model="auto", messages=MSGS, response_format={"type": "json_object"})
        env, d = seen[-1]
        assert (env["quality_floor"], env["org"], env["structure_type"]) == (0.7, "acme", "json")
        assert d.org == "acme"

        router.completion(model="auto", messages=MSGS, response_format={"type": "json_object"},
                          metadata={"tally": {"task_type": "summarization",
                                              "structure_type": "list", "quality_floor": 0.9}})
        env, d = seen[-1]
        assert d.task_type == "summarisation"
        assert (env["structure_type"], env["quality_floor"], env["org"]) == ("list", 0.9, "acme")

        router.completion(model="auto", messages=MSGS, metadata={"tally": "translation"})
        assert seen[-1][1].task_type == "translation"
        strategy.flush()


def test_bad_defaults_raise_at_construction():
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:")
    try:
        with pytest.raises(ValueError, match="colour"):
            TallyStrategy(tally, default_envelope={"colour": "red"})
        with pytest.raises(ValueError, match="scorer"):
            TallyStrategy(tally, scorer="not callable")  # type: ignore[arg-type]
    finally:
        tally.close()


# -- fail open -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fails_open_to_the_fallback_when_tally_raises(monkeypatch, caplog, mode):
    with installed() as (router, tally, strategy):
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the bandit is on fire")

        monkeypatch.setattr(tally, "route", broken)
        with caplog.at_level(logging.DEBUG, logger="tally.litellm"):
            for _ in range(3):
                r, text = call(router, strategy, mode, False,
                               metadata={"tally": {"task_type": "qa-simple"}})
                assert served_id(r) == "4o" and text == "from 4o"
                assert get_decision(r)["routed_by"] == "fail-open"
        warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "bandit is on fire" in warnings[0].getMessage()
        assert strategy.errors["route"] == 3
        got = rows(tally)
        assert len(got) == 3
        assert all(row["model"] == "gpt-4o" and row["task_type"] == "qa-simple"
                   and row["decision_id"] is None and row["success"] == 1 for row in got)


def test_fails_open_to_litellms_choice_without_a_fallback_deployment(monkeypatch):
    model_list = [dep("gpt-4o-mini", "mini"), dep("claude-haiku-4-5", "haiku")]
    with installed(model_list) as (router, tally, strategy):
        monkeypatch.setattr(tally, "route", lambda *a, **k: 1 / 0)
        r = router.completion(model="auto", messages=MSGS)
        assert served_id(r) in ("mini", "haiku")
        assert get_decision(r)["routed_by"] == "fail-open"
        assert strategy.errors == {"route": 1}
        strategy.flush()
        assert [row["model"] for row in rows(tally)] == [MODEL_OF[served_id(r)]]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    "envelope",
    [{"task_type": "qa", "colour": "red"}, {"task_type": "qa", "quality_floor": 7}, 42],
    ids=["unknown-field", "floor-out-of-range", "not-a-mapping"],
)
def test_bad_envelope_in_metadata_fails_open_and_logs_once(caplog, mode, envelope):
    with installed() as (router, tally, strategy), caplog.at_level(
        logging.DEBUG, logger="tally.litellm"
    ):
        for _ in range(3):
            r, text = call(router, strategy, mode, False, metadata={"tally": envelope})
            assert served_id(r) == "4o" and text == "from 4o"
            assert get_decision(r)["routed_by"] == "fail-open"
        warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "routing failed" in warnings[0].getMessage()
        assert strategy.errors == {"route": 3}
        assert [(row["model"], row["success"]) for row in rows(tally)] == [("gpt-4o", 1)] * 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fails_open_when_tally_is_closed(mode):
    with installed() as (router, tally, strategy):
        tally.close()

        async def acall() -> Any:
            r = await router.acompletion(model="auto", messages=MSGS)
            await strategy.aflush(timeout=1)
            return r

        if mode == "async":
            r = asyncio.run(acall())
        else:
            r = router.completion(model="auto", messages=MSGS)
            strategy.flush(timeout=1)
        assert r.choices[0].message.content == "from 4o"
        assert get_decision(r)["routed_by"] == "fail-open"
        assert strategy.errors["route"] == 1
        assert strategy.errors["telemetry"] == 1  # reported, not raised


# -- setup -----------------------------------------------------------------------


def test_pool_from_router_maps_prefixes_and_custom_prices(caplog):
    model_list = [
        dep("openai/gpt-4o-mini", "a"),
        dep("gpt-4o-mini", "a2"),
        dep("anthropic/claude-haiku-4-5", "b"),
        dep("openai/my-finetune", "c", input_cost_per_token=1e-7, output_cost_per_token=4e-7),
        dep("openai/mystery-model", "d"),
    ]
    router = make_router(model_list)
    with caplog.at_level(logging.WARNING, logger="tally.litellm"):
        pool = pool_from_router(router)
    names = [p if isinstance(p, str) else p.name for p in pool]
    assert names == ["gpt-4o-mini", "claude-haiku-4-5", "openai/my-finetune"]
    assert "mystery-model" in caplog.text


def test_from_router_builds_the_pool_and_installs():
    router = make_router(pool_deployments())
    strategy = TallyStrategy.from_router(router, fallback="gpt-4o", store=":memory:", seed=1)
    try:
        assert strategy.router is router
        assert strategy.tally.catalog.names == POOL
        r = router.completion(model="auto", messages=MSGS)
        assert get_decision(r)["model"] == MODEL_OF[served_id(r)]
        assert strategy.flush()
        assert len(rows(strategy.tally)) == 1
    finally:
        strategy.close()
    with pytest.raises(Exception, match="closed"):
        strategy.tally.route(task_type="qa")


def test_uninstall_gives_the_router_back():
    with installed() as (router, tally, strategy):
        strategy.uninstall()
        assert strategy.callback not in litellm.callbacks
        assert "get_available_deployment" not in router.__dict__
        r = router.completion(model="auto", messages=MSGS)
        assert get_decision(r) is None
        assert rows(tally) == []


def test_two_routers_two_strategies_each_report_their_own():
    with installed() as (r1, t1, s1), installed() as (r2, t2, s2):
        for _ in range(3):
            r1.completion(model="auto", messages=MSGS)
        r2.completion(model="auto", messages=MSGS)
        assert s1.flush() and s2.flush()
        assert (len(rows(t1)), len(rows(t2))) == (3, 1)
