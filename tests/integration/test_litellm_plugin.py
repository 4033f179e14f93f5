"""TallyStrategy as a routing plugin (``Router(plugins=[...])``) on a real litellm.Router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import litellm
import pytest
from litellm.types.router import RoutingContext, RoutingPlugin

from tally_core import InvalidFieldError, Tally
from tally_litellm import TallyPlugin, TallyStrategy, get_decision
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    POOL,
    cooling_ids,
    dep,
    litellm_callbacks_restored,
    pool_deployments,
    rows,
    served_id,
    train,
)

MODEL_OF = {"mini": "gpt-4o-mini", "haiku": "claude-haiku-4-5", "4o": "gpt-4o"}
QA = {"tally": {"task_type": "qa-simple"}}
CHEAP_IS_GOOD = {"gpt-4o-mini": 0.95, "claude-haiku-4-5": 0.95, "gpt-4o": 0.95}


@contextmanager
def plugged(
    model_list: list[dict[str, Any]] | None = None,
    *,
    before: list[Any] | None = None,
    router_kwargs: dict[str, Any] | None = None,
    **strategy_kwargs: Any,
) -> Iterator[tuple[litellm.Router, Tally, TallyStrategy]]:
    """A router running ``before`` plugins then Tally's, the strategy installed on it."""
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:", seed=7)
    strategy = TallyStrategy(tally, **strategy_kwargs)
    router = litellm.Router(
        model_list=model_list or pool_deployments(),
        plugins=[*(before or []), strategy.as_plugin()],
        **{"num_retries": 0, **(router_kwargs or {})},
    )
    strategy.install(router)
    try:
        yield router, tally, strategy
    finally:
        strategy.close()
        tally.close()


def acall(router: Any, strategy: TallyStrategy, stream: bool = False, **kw: Any) -> Any:
    """One ``acompletion`` (stream consumed), telemetry flushed; the response or the exception.

    Each deployment's mock reply names it: the text must name the deployment that served.
    """
    kw.setdefault("metadata", dict(QA))

    async def go() -> Any:
        try:
            r = await router.acompletion(model="auto", messages=MSGS, stream=stream, **kw)
            if stream:
                text = "".join([c.choices[0].delta.content or "" async for c in r])
            else:
                text = r.choices[0].message.content
            assert text == f"from {served_id(r)}"
            return r
        except Exception as exc:
            return exc
        finally:
            assert await strategy.aflush()

    return asyncio.run(go())


def spy_route(monkeypatch: pytest.MonkeyPatch, tally: Tally) -> list[Any]:
    seen: list[Any] = []
    real = tally.route

    def route(envelope: Any = None, **fields: Any) -> Any:
        d = real(envelope, **fields)
        seen.append((dict(envelope), d))
        return d

    monkeypatch.setattr(tally, "route", route)
    return seen


class KeepOnly:
    """A policy plugin: only these provider models may serve."""

    def __init__(self, *models: str) -> None:
        self.models = models

    async def run(self, context: RoutingContext) -> RoutingContext:
        context.candidate_models = [m for m in context.candidate_models if m in self.models]
        return context


def test_the_plugin_is_a_litellm_routing_plugin():
    tally = Tally(POOL, store=":memory:")
    try:
        strategy = TallyStrategy(tally)
        plugin = strategy.as_plugin()
        assert plugin is strategy.as_plugin()
        assert isinstance(plugin, TallyPlugin) and isinstance(plugin, RoutingPlugin)
        assert asyncio.iscoroutinefunction(plugin.run)  # what the proxy's config loader checks
    finally:
        tally.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_served_model_is_tallys_choice_and_reported(monkeypatch, stream):
    with plugged() as (router, tally, strategy):
        assert strategy.mode == "plugin"
        seen = spy_route(monkeypatch, tally)
        responses = [acall(router, strategy, stream) for _ in range(6)]
        assert len(seen) == 6
        for r, (_, decision) in zip(responses, seen, strict=True):
            assert MODEL_OF[served_id(r)] == decision.model
            info = get_decision(r)
            assert info["decision_id"] == decision.decision_id
            assert (info["model"], info["routed_by"]) == (decision.model, "tally")
            assert info["deployment_id"] == served_id(r)
            headers = r._hidden_params["additional_headers"]
            assert headers["x-tally-decision-id"] == decision.decision_id
        got = {row["decision_id"]: row for row in rows(tally)}
        assert len(got) == 6
        for r in responses:
            row = got[get_decision(r)["decision_id"]]
            assert row["model"] == MODEL_OF[served_id(r)] and row["success"] == 1
            assert row["input_tokens"] > 0 and row["cost_usd"] > 0
        assert strategy.errors == {}


def test_the_decision_is_a_routing_signal_in_the_callers_metadata():
    with plugged() as (router, tally, strategy):
        md: dict[str, Any] = {"tally": {"task_type": "qa-simple"}}
        r = acall(router, strategy, metadata=md)
        assert md["routing_plugin_signals"]["tally"]["decision_id"] == get_decision(r)[
            "decision_id"]


def test_routing_follows_what_tally_learned():
    with plugged() as (router, tally, strategy):
        train(tally, "code-debug", {"gpt-4o-mini": 0.3, "claude-haiku-4-5": 0.95, "gpt-4o": 0.97})
        meta = {"tally": {"task_type": "code-debug", "quality_floor": 0.8}}
        served = [served_id(acall(router, strategy, metadata=dict(meta))) for _ in range(10)]
        assert "mini" not in served
        assert served.count("haiku") >= 8


def test_an_earlier_policy_plugin_limits_what_tally_may_pick(monkeypatch):
    # The policy keeps mini and 4o; Tally's pick is made among those two.
    with plugged(before=[KeepOnly("gpt-4o-mini", "openai/gpt-4o")]) as (router, tally, strategy):
        seen = spy_route(monkeypatch, tally)
        served = {served_id(acall(router, strategy)) for _ in range(8)}
        assert served <= {"mini", "4o"}
        assert all(env["allowed_models"] == ("gpt-4o-mini", "gpt-4o") for env, _ in seen)


def test_plugin_mode_needs_the_plugin_in_the_router_and_uninstall_passes_through(caplog):
    # LiteLLM reads a router's plugins when it is built (from 1.110 they are
    # not a runtime setting): plugin=True on a router without ours is refused.
    bare = litellm.Router(model_list=pool_deployments(), num_retries=0)
    with pytest.raises(InvalidFieldError, match="plugins=\\[strategy.as_plugin\\(\\)\\]"):
        TallyStrategy.from_router(bare, fallback="gpt-4o", store=":memory:", seed=1, plugin=True)
    strategy = TallyStrategy(Tally(POOL, fallback="gpt-4o", store=":memory:", seed=1))
    router = litellm.Router(model_list=pool_deployments(), num_retries=0,
                            plugins=[strategy.as_plugin()])
    try:
        assert strategy.install(router, plugin=True).mode == "plugin"
        strategy.install(router)  # again: still plugin mode, one callback
        assert strategy.mode == "plugin"
        assert sum(cb is strategy.callback for cb in litellm.callbacks) == 1
        r = acall(router, strategy)
        assert get_decision(r)["routed_by"] == "tally"
        strategy.uninstall()
        assert strategy.mode is None and strategy.callback not in litellm.callbacks
        with caplog.at_level(logging.WARNING, logger="tally.litellm"):
            r = acall(router, strategy)  # LiteLLM routes: the plugin passes it through
        assert not isinstance(r, Exception) and get_decision(r) is None
        assert "install(router)" in caplog.text
    finally:
        strategy.close()
        strategy.tally.close()


def test_retry_avoids_the_failed_model_and_reports_both():
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   *pool_deployments()[1:]]
    with plugged(deployments, router_kwargs={"num_retries": 1}) as (router, tally, strategy):
        train(tally, "qa-simple", CHEAP_IS_GOOD)  # so mini is Tally's first pick
        r = acall(router, strategy)
        assert not isinstance(r, Exception), r
        assert served_id(r) == "haiku"
        routed = [row for row in rows(tally) if row["decision_id"]]
        failed, served = sorted(routed, key=lambda row: row["success"])
        assert (failed["model"], failed["success"], failed["error"]) == (
            "gpt-4o-mini", 0, "InternalServerError")
        assert (served["model"], served["success"]) == ("claude-haiku-4-5", 1)
        assert served["decision_id"] == get_decision(r)["decision_id"] != failed["decision_id"]


def test_fallback_to_a_group_outside_the_pool_still_works():
    # LiteLLM keeps the first hop's narrowing in the request metadata; the hop
    # to "backup" (which the plugin does not narrow) must not be filtered by it.
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   dep("claude-haiku-4-5", "haiku"), dep("openai/gpt-4.1", "b1", "backup")]
    with plugged(deployments, router_kwargs={"fallbacks": [{"auto": ["backup"]}]}) as (
        router, tally, strategy,
    ):
        pin = {"tally": {"task_type": "qa-simple", "allowed_models": ["gpt-4o-mini"]}}
        r = acall(router, strategy, metadata=pin)
        assert not isinstance(r, Exception), r
        assert served_id(r) == "b1"
        info = get_decision(r)
        assert (info["model"], info["routed_by"], info["model_group"]) == (
            "gpt-4.1", "litellm", "backup")
        failed, served = rows(tally)
        assert (failed["model"], failed["success"]) == ("gpt-4o-mini", 0)
        assert (served["model"], served["success"]) == ("gpt-4.1", 1)
        assert served["decision_id"] == failed["decision_id"] == info["decision_id"]


def test_a_model_in_cooldown_is_not_picked(monkeypatch):
    with plugged(router_kwargs={"allowed_fails": 0, "cooldown_time": 60}) as (
        router, tally, strategy,
    ):
        # A failure puts mini in cooldown: narrowing to it now would leave
        # LiteLLM no deployment, and the call would fail.
        pin = {"tally": {"task_type": "qa-simple", "allowed_models": ["gpt-4o-mini"]}}
        bad = acall(router, strategy, mock_response="litellm.InternalServerError", metadata=pin)
        assert isinstance(bad, Exception)
        assert "mini" in cooling_ids(router, ["mini"])
        seen = spy_route(monkeypatch, tally)
        served = [served_id(acall(router, strategy)) for _ in range(5)]
        assert "mini" not in served
        assert all("gpt-4o-mini" not in env["allowed_models"] for env, _ in seen)


# -- fail open -------------------------------------------------------------------


def test_fails_open_to_the_fallback_when_tally_raises(monkeypatch, caplog):
    with plugged() as (router, tally, strategy):
        monkeypatch.setattr(tally, "route", lambda *a, **k: 1 / 0)
        with caplog.at_level(logging.DEBUG, logger="tally.litellm"):
            for _ in range(3):
                r = acall(router, strategy)
                assert served_id(r) == "4o"
                assert get_decision(r)["routed_by"] == "fail-open"
        warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "ZeroDivisionError" in warnings[0].getMessage()
        assert strategy.errors == {"route": 3}
        assert [row["model"] for row in rows(tally)] == ["gpt-4o"] * 3


def test_bad_envelope_fails_open_and_logs_once(caplog):
    with plugged() as (router, tally, strategy), caplog.at_level(logging.DEBUG, "tally.litellm"):
        for _ in range(2):
            r = acall(router, strategy, metadata={"tally": {"task_type": "qa", "colour": "red"}})
            assert served_id(r) == "4o"
        warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "colour" in warnings[0].getMessage()
        assert strategy.errors == {"route": 2}


def test_without_a_fallback_deployment_litellm_picks_and_it_is_reported(monkeypatch):
    deployments = [dep("gpt-4o-mini", "mini"), dep("claude-haiku-4-5", "haiku")]
    with plugged(deployments) as (router, tally, strategy):
        monkeypatch.setattr(tally, "route", lambda *a, **k: 1 / 0)
        r = acall(router, strategy)
        assert served_id(r) in ("mini", "haiku")
        info = get_decision(r)
        assert (info["routed_by"], info["model"]) == ("fail-open", MODEL_OF[served_id(r)])
        assert [row["model"] for row in rows(tally)] == [MODEL_OF[served_id(r)]]


def test_a_plugin_whose_strategy_is_not_installed_leaves_routing_to_litellm(caplog):
    tally = Tally(POOL, fallback="gpt-4o", store=":memory:")
    strategy = TallyStrategy(tally)
    router = litellm.Router(model_list=pool_deployments(), plugins=[strategy.as_plugin()])
    try:
        with caplog.at_level(logging.WARNING, logger="tally.litellm"):
            r = asyncio.run(router.acompletion(model="auto", messages=MSGS))
        assert served_id(r) in MODEL_OF
        assert get_decision(r) is None
        assert "install(router)" in caplog.text
    finally:
        tally.close()


def test_sync_calls_are_refused_by_litellm_when_plugins_are_configured():
    # LiteLLM's rule, not Tally's: its sync path never runs plugins, so it
    # raises rather than skip them. install(router) without plugin=True
    # serves sync calls.
    with plugged() as (router, tally, strategy):
        with pytest.raises(ValueError, match="plugins"):
            router.completion(model="auto", messages=MSGS)
