"""Cascades through a ``litellm.Router``: try a cheap tier, escalate on a failed check.

``cascade(router, checks=[...], model="auto", messages=...)`` calls the router
once per tier, so every tier goes through ``TallyStrategy`` (its envelope
pins the tier's model), LiteLLM's retries and fallbacks, and the telemetry
callback; each tier's check result goes to Tally as that call's quality, so
the cascade learns where to start (``tally_core.cascade``). Every attempt is
in the ledger, tagged ``cascade`` and ``cascade:<id>``.

>>> import litellm
>>> from tally_litellm import TallyStrategy
>>> from tally_core.cascade import NonEmpty
>>> router = litellm.Router(model_list=[
...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o-mini", "mock_response": " "}},
...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o", "mock_response": "Paris"}}])
>>> strategy = TallyStrategy.from_router(router, fallback="gpt-4o", store=":memory:", seed=0)
>>> r = cascade(router, checks=[NonEmpty()], model="auto",
...             messages=[{"role": "user", "content": "Capital of France?"}],
...             metadata={"tally": "qa-simple"})
>>> r.model, r.tier, [a.passed for a in r.attempts]
('gpt-4o', 1, [False, True])
>>> strategy.close()
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from tally_core import InvalidFieldError
from tally_core.cascade import Cascade, CascadeResult, CascadeRun, Check, Judge, response_text
from tally_litellm._routing import RoutingState, get_decision, state_of

__all__ = ["acascade", "cascade", "judge"]


def _start(
    state: RoutingState,
    checks: Sequence[Check] | None,
    plan: Cascade | None,
    model: str,
    messages: Sequence[Any],
    metadata: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> CascadeRun:
    if kwargs.get("stream"):
        raise InvalidFieldError("stream", "a cascade checks whole answers: call it unstreamed")
    if plan is None:
        if not checks:
            raise InvalidFieldError("checks", "give checks=[...] or cascade=Cascade(...)")
        plan = Cascade(checks=list(checks))
    md = dict(metadata or {})
    envelope = state.envelope(md, messages, dict(kwargs))
    return plan.start(state.tally, envelope)


def _state(router: Any) -> RoutingState:
    state = state_of(router)
    if state is None:
        raise InvalidFieldError(
            "router", "no TallyStrategy is installed on this router: "
            "TallyStrategy(...).install(router) first")
    return state


def _tier_kwargs(
    run: CascadeRun, tier: int, model: str, messages: Sequence[Any],
    metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    md = dict(metadata or {})
    md["tally"] = run.envelope_for(tier)
    return {**kwargs, "model": model, "messages": list(messages), "metadata": md}


def _record(state: RoutingState, run: CascadeRun, tier: int, messages: Sequence[Any],
            response: Any, started: float) -> bool:
    """Check a tier's answer; True when the cascade is done."""
    info = get_decision(response) or {}
    hidden = getattr(response, "_hidden_params", None)
    cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
    call_id = hidden.get("litellm_call_id") if isinstance(hidden, Mapping) else None
    attempt = run.record(
        tier, {"messages": list(messages)}, response,
        cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        latency_ms=(time.perf_counter() - started) * 1000.0,
        decision_id=info.get("decision_id"), model=info.get("model"),
        grade=lambda q: state.grade(call_id, q),
    )
    return attempt.passed


def cascade(
    router: Any,
    *,
    checks: Sequence[Check] | None = None,
    cascade: Cascade | None = None,
    model: str,
    messages: Sequence[Any],
    metadata: Mapping[str, Any] | None = None,
    **completion_kwargs: Any,
) -> CascadeResult:
    """``router.completion`` tier by tier until an answer passes ``checks``.

    Returns a ``CascadeResult``: ``.response`` (the accepted one), ``.model``,
    ``.tier`` (0-based), ``.attempts`` (model, passed, quality, cost, latency
    each) and ``.cost_usd`` (all attempts, judges included). A tier whose
    call raises is escalated past; the last tier's error is raised.
    """
    state = _state(router)
    run = _start(state, checks, cascade, model, messages, metadata, completion_kwargs)
    response: Any = None
    while (step := run.next_tier()) is not None:
        tier, _ = step
        started = time.perf_counter()
        try:
            response = router.completion(
                **_tier_kwargs(run, tier, model, messages, metadata, completion_kwargs))
        except Exception:
            run.failed(tier, latency_ms=(time.perf_counter() - started) * 1000.0)
            if run.next_tier() is None:
                raise
            continue
        if _record(state, run, tier, messages, response, started):
            break
    return run.result(response)


async def acascade(
    router: Any,
    *,
    checks: Sequence[Check] | None = None,
    cascade: Cascade | None = None,
    model: str,
    messages: Sequence[Any],
    metadata: Mapping[str, Any] | None = None,
    **completion_kwargs: Any,
) -> CascadeResult:
    """``cascade`` with ``router.acompletion``."""
    state = _state(router)
    run = _start(state, checks, cascade, model, messages, metadata, completion_kwargs)
    response: Any = None
    while (step := run.next_tier()) is not None:
        tier, _ = step
        started = time.perf_counter()
        try:
            response = await router.acompletion(
                **_tier_kwargs(run, tier, model, messages, metadata, completion_kwargs))
        except Exception:
            run.failed(tier, latency_ms=(time.perf_counter() - started) * 1000.0)
            if run.next_tier() is None:
                raise
            continue
        if _record(state, run, tier, messages, response, started):
            break
    return run.result(response)


def judge(model: str, threshold: float = 0.7, **completion_kwargs: Any) -> Judge:
    """A ``Judge`` check that asks ``model`` (through ``litellm.completion``, not routed by
    Tally) to grade each answer; its cost is counted in the cascade's."""
    import litellm

    def ask(prompt: str) -> tuple[str, float]:
        r = litellm.completion(model=model, messages=[{"role": "user", "content": prompt}],
                               **completion_kwargs)
        hidden = getattr(r, "_hidden_params", None)
        cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
        return response_text(r), float(cost) if isinstance(cost, (int, float)) else 0.0

    return Judge(ask=ask, threshold=threshold)
