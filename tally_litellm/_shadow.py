"""Shadow copies of routed calls, made after the user has the response.

``tally.shadow(candidate, sample=...)`` (``tally_core.shadow``) says which
calls get a copy; ``tally_core.shadow.ShadowCopies`` plans it, runs it in
the background and records it; this module makes the LiteLLM call. It runs
from the telemetry callback, which LiteLLM calls after the response went
back to the caller, and never in the caller's way: sync calls' copies run on
a small thread pool of their own (not LiteLLM's logging threads), async
calls' copies as tasks on the loop; both are bounded (``MAX_PENDING``) and
drop what does not fit, counting it. The copy goes straight to the candidate's deployment through
``litellm.completion`` (not back through the router, so it is not routed or
reported twice), with the request's messages and its output-shaping
parameters. It is recorded as a decision pinned to the candidate. The call's
compliance rules (its ``allowed_models`` / ``allowed_providers``) hold for
copies too; the quality floor does not gate them, since a copy serves no
user (a candidate below the floor keeps being evaluated, never served).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tally_core.adapters import run_sync
from tally_core.shadow import MAX_PENDING, ShadowCopies
from tally_litellm import _host
from tally_litellm._attempts import Attempt

if TYPE_CHECKING:
    from tally_litellm._routing import RoutingState

__all__ = ["MAX_PENDING", "ShadowRunner"]

# Request parameters a copy keeps: what shapes the answer, nothing about routing.
_KEEP = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
         "tools", "tool_choice", "response_format", "n", "presence_penalty",
         "frequency_penalty")


class ShadowRunner:
    """Makes the shadow copies of one routing state's calls."""

    def __init__(self, state: RoutingState) -> None:
        self.state = state
        self.copies = ShadowCopies(state.tally, state.once)

    @property
    def made(self) -> int:
        return self.copies.made

    @property
    def dropped(self) -> int:
        return self.copies.dropped

    def after(self, attempt: Attempt, outcome: Mapping[str, Any], kwargs: Mapping[str, Any],
              *, is_async: bool) -> None:
        """After a routed call was reported: make a copy if one is drawn. Never raises."""
        state = self.state
        try:
            if attempt.decision is None or not outcome.get("success"):
                return
            found: dict[str, dict[str, Any]] = {}

            def available(candidate: str) -> bool:
                dep = self._deployment(attempt.model_group, candidate)
                if dep is not None:
                    found[candidate] = dep
                return dep is not None

            decision = self.copies.plan(attempt.decision, outcome.get("model"),
                                        rules=attempt.rules or {}, available=available)
            if decision is None:
                return
            call, request = self._call(attempt, decision, found[decision.model], kwargs)
            if is_async:
                self.copies.start_async(lambda: self._arun(decision, call, request))
            else:
                self.copies.start(lambda: self._run(decision, call, request))
        except Exception:
            state.once.error("shadow", "tally: could not start a shadow call", exc_info=True)

    def _call(
        self, attempt: Attempt, decision: Any, deployment: Mapping[str, Any],
        kwargs: Mapping[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The copy's ``litellm.completion`` arguments, and the request the scorer sees."""
        d = attempt.decision
        assert d is not None
        params = dict(deployment.get("litellm_params") or {})
        optional = kwargs.get("optional_params")
        extra = {k: v for k, v in (optional or {}).items() if k in _KEEP} if isinstance(
            optional, Mapping) else {}
        call = {**params, **extra, "messages": list(kwargs.get("messages") or ())}
        request = {"messages": call["messages"], "model": decision.model,
                   "model_group": attempt.model_group, "task_type": d.task_type,
                   "decision_id": decision.decision_id, "metadata": {}, "optional_params": extra}
        return call, request

    def _deployment(self, group: str, candidate: str) -> dict[str, Any] | None:
        state = self.state
        index = state.pool_index()
        for deployments in (state.group(group), _host.all_deployments(state.router)):
            for dep in deployments:
                if index.pool_name(dep) == candidate:
                    return dep
        return None

    def _run(self, decision: Any, call: dict[str, Any], request: dict[str, Any]) -> None:
        import litellm

        started = time.perf_counter()
        try:
            response = litellm.completion(**call)
        except Exception as exc:
            self.copies.failed(decision, exc, started)
            return
        score = self._score(request, response)
        if inspect.isawaitable(score):
            score = run_sync(score)
        self._record(decision, response, score, started)

    async def _arun(self, decision: Any, call: dict[str, Any], request: dict[str, Any]) -> None:
        import litellm

        started = time.perf_counter()
        try:
            response = await litellm.acompletion(**call)
        except Exception as exc:
            self.copies.failed(decision, exc, started)
            return
        score = self._score(request, response)
        if inspect.isawaitable(score):
            score = await score
        self._record(decision, response, score, started)

    def _score(self, request: dict[str, Any], response: Any) -> Any:
        scorer = self.state.scorer
        if scorer is None:
            return None
        try:
            return scorer(request, response)
        except Exception as exc:
            self.state.scorer_failed(exc)
            return None

    def _record(self, decision: Any, response: Any, score: Any, started: float) -> None:
        latency_ms = (time.perf_counter() - started) * 1000.0
        hidden = getattr(response, "_hidden_params", None)
        cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
        usage = getattr(response, "usage", None)
        self.copies.record(
            decision, started, success=True, quality=self.state.quality(score),
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
            latency_ms=latency_ms,
            cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        )

    def wait(self, timeout: float | None) -> bool:
        """Until every shadow started so far has been recorded (``tally.flush``)."""
        return self.copies.wait(timeout)

    def close(self) -> None:
        self.copies.close()
