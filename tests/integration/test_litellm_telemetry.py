"""TallyCallback on a real litellm.Router: what reaches the ledger and the bandit."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import litellm
import pytest

from tally_core import Tally
from tally_core.stores.memory import MemoryStore
from tally_litellm import TallyStrategy, get_decision
from tests.integration.litellm_support import (  # noqa: F401 (an autouse fixture)
    MSGS,
    POOL,
    dep,
    expected_cost,
    installed,
    litellm_callbacks_restored,
    make_router,
    pool_deployments,
    rows,
    served_id,
    stat,
    train,
)

QA = {"tally": {"task_type": "qa-simple"}}
CHEAP_IS_GOOD = {"gpt-4o-mini": 0.95, "claude-haiku-4-5": 0.95, "gpt-4o": 0.95}


def run(router: Any, strategy: TallyStrategy, mode: str, stream: bool = False,
        model: str = "auto", **kw: Any) -> Any:
    """One call (stream consumed), telemetry flushed; returns the response or the exception."""
    kw.setdefault("metadata", {"tally": {"task_type": "qa-simple"}})

    async def acall() -> Any:
        try:
            r = await router.acompletion(model=model, messages=MSGS, stream=stream, **kw)
            if stream:
                _ = [c async for c in r]
            return r
        except Exception as exc:
            return exc
        finally:
            await strategy.aflush()

    if mode == "async":
        return asyncio.run(acall())
    try:
        r = router.completion(model=model, messages=MSGS, stream=stream, **kw)
        if stream:
            _ = list(r)
        return r
    except Exception as exc:
        return exc
    finally:
        strategy.flush()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_call_reports_tokens_cost_latency_success(mode, stream):
    with installed() as (router, tally, strategy):
        responses = [run(router, strategy, mode, stream) for _ in range(4)]
        got = rows(tally)
        assert len(got) == 4
        for r, row in zip(responses, got, strict=True):
            info = get_decision(r)
            assert row["decision_id"] == info["decision_id"]
            assert row["model"] == info["model"]
            assert row["phase"] == info["phase"]
            assert row["success"] == 1 and row["error"] is None
            assert row["task_type"] == "qa-simple"
            assert row["input_tokens"] > 0 and row["output_tokens"] > 0
            assert row["cost_usd"] == pytest.approx(
                expected_cost(row["model"], row["input_tokens"], row["output_tokens"])
            )
            assert row["cost_usd"] > 0
            assert row["latency_ms"] is not None and row["latency_ms"] >= 0
            if not stream:
                assert (row["input_tokens"], row["output_tokens"]) == (10, 20)  # mock usage
                assert row["cost_usd"] == pytest.approx(r._hidden_params["response_cost"])
        per_model: dict[str, int] = {}
        for row in got:
            per_model[row["model"]] = per_model.get(row["model"], 0) + 1
        for model, n in per_model.items():
            assert stat(tally, "qa-simple", model)["calls"] == n
        assert strategy.errors == {}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("reply", "extra", "error"),
    [
        ("litellm.InternalServerError", {}, "InternalServerError"),
        ("litellm.RateLimitError", {}, "RateLimitError"),
        ("litellm.ContextWindowExceededError", {}, "ContextWindowExceededError"),
        ("Exception: content_filter_policy secret-canary", {}, None),
        ("ok", {"mock_timeout": True, "timeout": 0.01}, "Timeout"),
    ],
    ids=["500", "429", "context", "content-policy", "timeout"],
)
def test_failure_is_reported_with_the_error_class(mode, reply, extra, error):
    model_list = [dep("gpt-4o-mini", "mini", reply=reply, **extra)]
    with installed(model_list) as (router, tally, strategy):
        exc = run(router, strategy, mode)
        assert isinstance(exc, Exception)
        (row,) = rows(tally)
        assert row["model"] == "gpt-4o-mini"
        assert row["success"] == 0
        assert row["error"] == (error or type(exc).__name__)
        assert "canary" not in (row["error"] or "")
        assert row["quality"] is None
        assert stat(tally, "qa-simple", "gpt-4o-mini")["error_share"] > 0
        assert strategy.errors == {}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_reports_the_failed_model_then_the_one_that_served(mode):
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   *pool_deployments()[1:]]
    with installed(deployments, router_kwargs={"num_retries": 1}) as (router, tally, strategy):
        train(tally, "qa-simple", CHEAP_IS_GOOD)  # so mini is Tally's first pick
        r = run(router, strategy, mode)
        assert not isinstance(r, Exception)
        assert served_id(r) == "haiku"  # mini failed on this request: not tried again
        assert r._hidden_params["additional_headers"]["x-litellm-attempted-retries"] == 1
        failed, served = [row for row in rows(tally) if row["decision_id"]]
        assert (failed["model"], failed["success"], failed["error"]) == (
            "gpt-4o-mini", 0, "InternalServerError")
        assert (served["model"], served["success"]) == ("claude-haiku-4-5", 1)
        assert served["decision_id"] == get_decision(r)["decision_id"] != failed["decision_id"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_failed_attempt_is_reported_when_all_fail(mode):
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   dep("claude-haiku-4-5", "haiku", reply="litellm.RateLimitError")]
    with installed(deployments, router_kwargs={"num_retries": 1}) as (router, tally, strategy):
        exc = run(router, strategy, mode)
        assert isinstance(exc, Exception)
        got = sorted((row["model"], row["success"], row["error"]) for row in rows(tally))
        assert got == [("claude-haiku-4-5", 0, "RateLimitError"),
                       ("gpt-4o-mini", 0, "InternalServerError")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fallback_outside_the_pool_is_reported_against_the_decision(mode):
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   dep("openai/gpt-4.1", "b1", "backup")]
    with installed(deployments, router_kwargs={"fallbacks": [{"auto": ["backup"]}]}) as (
        router, tally, strategy,
    ):
        r = run(router, strategy, mode)
        assert served_id(r) == "b1"
        info = get_decision(r)
        assert (info["model"], info["routed_by"], info["model_group"]) == (
            "gpt-4.1", "litellm", "backup")
        failed, served = rows(tally)
        assert (failed["model"], failed["success"]) == ("gpt-4o-mini", 0)
        assert (served["model"], served["success"]) == ("gpt-4.1", 1)
        assert served["decision_id"] == failed["decision_id"] == info["decision_id"]
        assert served["cost_usd"] == pytest.approx(r._hidden_params["response_cost"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fallback_to_a_pool_group_is_routed_by_tally(mode):
    deployments = [dep("gpt-4o-mini", "mini", reply="litellm.InternalServerError"),
                   dep("openai/gpt-4o", "4o-strong", "strong")]
    with installed(deployments, router_kwargs={"fallbacks": [{"auto": ["strong"]}]}) as (
        router, tally, strategy,
    ):
        r = run(router, strategy, mode)
        assert served_id(r) == "4o-strong"
        assert get_decision(r)["routed_by"] == "tally"
        failed, served = rows(tally)
        assert (failed["model"], failed["success"]) == ("gpt-4o-mini", 0)
        assert (served["model"], served["success"]) == ("gpt-4o", 1)
        assert served["decision_id"] == get_decision(r)["decision_id"] != failed["decision_id"]


# -- quality ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "quality"), [(0.25, 0.25), (True, 1.0), (False, 0.0), (None, 1.0)]
)
def test_scorer_quality_reaches_ledger_and_bandit(score, quality):
    seen: list[tuple[dict[str, Any], Any]] = []

    def scorer(request: dict[str, Any], response: Any) -> Any:
        seen.append((request, response))
        return score

    with installed(scorer=scorer) as (router, tally, strategy):
        r = run(router, strategy, "sync")
        (row,) = rows(tally)
        assert row["quality"] == quality
        learned = stat(tally, "qa-simple", row["model"])
        assert learned["quality_obs"] == 1
        # One observation moves the posterior mean from its 0.5 prior toward it.
        assert (learned["mean_quality"] - 0.5) * (quality - 0.5) > 0
        request, response = seen[0]
        assert request["messages"] == MSGS
        assert request["model"] == row["model"]
        assert request["task_type"] == "qa-simple"
        assert request["decision_id"] == get_decision(r)["decision_id"]
        assert request["metadata"]["tally"] == {"task_type": "qa-simple"}
        assert response.choices[0].message.content == f"from {served_id(r)}"


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_async_scorer_in_every_path(mode, stream):
    async def scorer(request: dict[str, Any], response: Any) -> float:
        await asyncio.sleep(0)
        return 0.5 if response.choices[0].message.content.startswith("from") else 0.0

    with installed(scorer=scorer) as (router, tally, strategy):
        run(router, strategy, mode, stream)
        (row,) = rows(tally)
        assert row["quality"] == 0.5
        assert strategy.errors == {}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_broken_scorer_never_breaks_the_call(mode):
    def scorer(request: dict[str, Any], response: Any) -> float:
        raise ValueError("judge is down")

    with installed(scorer=scorer) as (router, tally, strategy):
        for _ in range(2):
            r = run(router, strategy, mode)
            assert not isinstance(r, Exception)
        got = rows(tally)
        assert [row["success"] for row in got] == [1, 1]
        assert strategy.errors == {"scorer": 2}


def test_out_of_range_score_is_ignored():
    with installed(scorer=lambda req, resp: 7.5) as (router, tally, strategy):
        run(router, strategy, "sync")
        (row,) = rows(tally)
        assert row["quality"] == 1.0  # counted by success alone
        assert strategy.errors == {"scorer-value": 1}


def test_late_feedback_joins_by_decision_id():
    with installed() as (router, tally, strategy):
        r = run(router, strategy, "sync")
        decision_id = get_decision(r)["decision_id"]
        tally.feedback(decision_id, quality=0.2, slugs=["incomplete"])
        tally.flush()
        (row,) = rows(tally)
        assert (row["quality"], row["slugs"]) == (0.2, ["incomplete"])
        learned = stat(tally, "qa-simple", row["model"])
        assert learned["quality_obs"] == 1 and learned["mean_quality"] < 0.5  # 1.0 replaced


def test_calls_not_routed_by_tally_are_not_reported():
    with installed() as (router, tally, strategy):
        litellm.completion(model="gpt-4o-mini", messages=MSGS, mock_response="direct")
        other = make_router(pool_deployments())
        other.completion(model="auto", messages=MSGS)
        strategy.flush()
        assert rows(tally) == []


def test_no_prompt_or_completion_text_is_stored(tmp_path: Path):
    canary = "zebra-canary-7f3a"
    deployments = [dep("gpt-4o-mini", "mini", reply=f"answer {canary}"),
                   # a provider error that quotes the prompt back
                   dep("claude-haiku-4-5", "haiku", reply=Exception(f"bad input: {canary}")),
                   dep("openai/gpt-4o", "4o", reply=f"answer {canary}")]
    router = make_router(deployments)
    tally = Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "state"), seed=3)
    strategy = TallyStrategy(tally, scorer=lambda req, resp: 0.9).install(router)
    try:
        msgs = [{"role": "user", "content": f"my secret is {canary}"}]
        for _ in range(6):
            try:
                # haiku (the erroring one) is the cheapest allowed, so it is
                # routed to whatever order calibration takes.
                router.completion(model="auto", messages=msgs,
                                  metadata={"tally": {"task_type": "qa-simple", "tags": ["t"],
                                                      "allowed_models": ["claude-haiku-4-5",
                                                                         "gpt-4o"]}})
            except Exception:
                pass
        assert strategy.flush()
        got = rows(tally)
        assert len(got) == 6
        errors = {row["error"] for row in got if not row["success"]}
        assert errors == {"InternalServerError"}  # the class, never the message
    finally:
        strategy.close()
        tally.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert canary.encode() not in path.read_bytes(), path


def test_concurrent_calls_sharing_one_metadata_dict_join_correctly():
    shared = {"tally": {"task_type": "qa-simple"}}  # one dict reused by every call

    async def go(router: Any, strategy: TallyStrategy) -> list[Any]:
        out = await asyncio.gather(*[
            router.acompletion(model="auto", messages=MSGS, metadata=shared) for _ in range(24)
        ])
        assert await strategy.aflush()
        return list(out)

    with installed() as (router, tally, strategy):
        responses = asyncio.run(go(router, strategy))
        by_decision = {row["decision_id"]: row for row in rows(tally)}
        assert len(by_decision) == 24
        for r in responses:
            row = by_decision[get_decision(r)["decision_id"]]
            # Who served, from the reply itself: with a shared metadata dict,
            # LiteLLM's own _hidden_params["model_id"] can name another call's
            # deployment (it reads metadata["model_info"], which every call rewrites).
            served = r.choices[0].message.content.removeprefix("from ")
            assert row["model"] == {"mini": "gpt-4o-mini", "haiku": "claude-haiku-4-5",
                                    "4o": "gpt-4o"}[served]
            assert get_decision(r)["deployment_id"] == served


def test_sync_calls_from_threads_are_all_reported():
    from concurrent.futures import ThreadPoolExecutor

    with installed() as (router, tally, strategy):
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(
                lambda _: router.completion(model="auto", messages=MSGS, metadata=dict(QA)),
                range(16),
            ))
        assert strategy.flush()
        got = {row["decision_id"] for row in rows(tally)}
        assert got == {get_decision(r)["decision_id"] for r in responses}


# -- telemetry never breaks the call ------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_telemetry_call_never_reaches_the_caller(monkeypatch, caplog, mode):
    with installed() as (router, tally, strategy):
        def broken(*args: Any, **kwargs: Any) -> str:
            raise RuntimeError("the queue is on fire")

        monkeypatch.setattr(tally, "telemetry", broken)
        with caplog.at_level(logging.DEBUG, logger="tally.litellm"):
            for _ in range(3):
                r = run(router, strategy, mode)
                assert not isinstance(r, Exception), r
                assert get_decision(r)["routed_by"] == "tally"
        warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "could not report" in warnings[0].getMessage()
        assert strategy.errors == {"telemetry": 3}


class DownStore(MemoryStore):
    """A state store whose every write fails, as a Redis or disk outage would."""

    def apply(self, batch_id: str, updates: Any, params: Any) -> bool:
        raise ConnectionError("store unreachable")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_store_outage_never_reaches_the_caller(mode):
    router = make_router(pool_deployments())
    tally = Tally(POOL, fallback="gpt-4o", store=DownStore(), seed=3)
    strategy = TallyStrategy(tally).install(router)

    async def acalls() -> list[Any]:
        out = [await router.acompletion(model="auto", messages=MSGS, metadata=dict(QA))
               for _ in range(4)]
        assert await strategy.aflush(timeout=1) is False  # logged, but not stored
        return out

    try:
        if mode == "async":
            responses = asyncio.run(acalls())
        else:
            responses = [router.completion(model="auto", messages=MSGS, metadata=dict(QA))
                         for _ in range(4)]
            assert strategy.flush(timeout=1) is False
        for r in responses:
            assert get_decision(r)["routed_by"] == "tally"  # routing reads no store
        assert strategy.errors == {}  # telemetry() only enqueued; the worker retries
    finally:
        strategy.uninstall()
        tally.close(timeout=0.5)
