"""Shadow copies of routed calls, made after the user has the response.

``tally.shadow(candidate, sample=...)`` (``tally_core.shadow``) says which
calls get a copy; this module makes the copy. It runs from the telemetry
callback, which LiteLLM calls after the response went back to the caller,
and never in the caller's way: sync calls' copies run on a small thread pool
of their own (not LiteLLM's logging threads), async calls' copies as tasks on
the loop; both are bounded (``MAX_PENDING``) and drop what does not fit,
counting it. The copy goes straight to the candidate's deployment through
``litellm.completion`` (not back through the router, so it is not routed or
reported twice), with the request's messages and its output-shaping
parameters. It is recorded as a decision pinned to the candidate. The call's
compliance rules (its ``allowed_models`` / ``allowed_providers``) hold for
copies too; the quality floor does not gate them, since a copy serves no
user (a candidate below the floor keeps being evaluated, never served).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tally_core import NoCandidateError
from tally_core.adapters import error_class, run_sync
from tally_core.shadow import SHADOW_TAG, shadow_of_tag
from tally_litellm import _host
from tally_litellm._attempts import Attempt

if TYPE_CHECKING:
    from tally_litellm._routing import RoutingState

__all__ = ["MAX_PENDING", "ShadowRunner"]

MAX_PENDING = 64
# Request parameters a copy keeps: what shapes the answer, nothing about routing.
_KEEP = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
         "tools", "tool_choice", "response_format", "n", "presence_penalty",
         "frequency_penalty")


class ShadowRunner:
    """Makes the shadow copies of one routing state's calls."""

    def __init__(self, state: RoutingState) -> None:
        self.state = state
        self.made = 0
        self.dropped = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _reserve(self) -> bool:
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                return False
            self._pending += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def after(self, attempt: Attempt, outcome: Mapping[str, Any], kwargs: Mapping[str, Any],
              *, is_async: bool) -> None:
        """After a routed call was reported: make a copy if one is drawn. Never raises."""
        state = self.state
        try:
            decision = attempt.decision
            if decision is None or not outcome.get("success"):
                return
            candidate = state.tally.shadows.pick(attempt.task_type, outcome.get("model"))
            if candidate is None:
                return
            job = self._prepare(attempt, candidate, kwargs)
            if job is None or not self._reserve():
                return
            if is_async:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    loop.create_task(self._arun(*job))
                    return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2,
                                                thread_name_prefix="tally-shadow")
            self._pool.submit(self._run, *job)
        except Exception:
            state.once.error("shadow", "tally: could not start a shadow call", exc_info=True)

    def _prepare(
        self, attempt: Attempt, candidate: str, kwargs: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
        state = self.state
        deployment = self._deployment(attempt.model_group, candidate)
        if deployment is None:
            state.once.error("shadow-deployment", "tally: no deployment of this router serves "
                             "the shadow candidate %s", candidate)
            return None
        d = attempt.decision
        assert d is not None
        rules = attempt.rules or {}
        allowed = rules.get("allowed_models")
        if allowed is not None and candidate not in allowed:
            return None  # the caller did not allow this model for this call
        env: dict[str, Any] = {
            "task_type": d.task_type, "org": d.org, "allowed_models": (candidate,),
            "tags": (SHADOW_TAG, shadow_of_tag(d.decision_id)),
        }
        if rules.get("allowed_providers") is not None:
            env["allowed_providers"] = rules["allowed_providers"]
        if d.floor is not None:
            env["quality_floor"] = d.floor
        try:
            decision = state.tally.route(env)
        except NoCandidateError:
            return None  # no permitted model: a compliance rule refuses the candidate
        if decision.model != candidate:
            return None  # a compliance rule refuses the candidate for this call
        # No floor test here: a copy serves no user, and evaluating a model the user
        # asked about is the point (its outcomes still count as evidence).
        params = dict(deployment.get("litellm_params") or {})
        optional = kwargs.get("optional_params")
        extra = {k: v for k, v in (optional or {}).items() if k in _KEEP} if isinstance(
            optional, Mapping) else {}
        call = {**params, **extra, "messages": list(kwargs.get("messages") or ())}
        request = {"messages": call["messages"], "model": candidate,
                   "model_group": attempt.model_group, "task_type": d.task_type,
                   "decision_id": decision.decision_id, "metadata": {}, "optional_params": extra}
        return decision, call, request

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
            try:
                response = litellm.completion(**call)
            except Exception as exc:
                self._failed(decision, exc, started)
                return
            score = self._score(request, response)
            if inspect.isawaitable(score):
                score = run_sync(score)
            self._record(decision, response, score, started)
        except Exception:
            self.state.once.error("shadow", "tally: a shadow call failed", exc_info=True)
        finally:
            self._release()

    async def _arun(self, decision: Any, call: dict[str, Any], request: dict[str, Any]) -> None:
        import litellm

        started = time.perf_counter()
        try:
            try:
                response = await litellm.acompletion(**call)
            except Exception as exc:
                self._failed(decision, exc, started)
                return
            score = self._score(request, response)
            if inspect.isawaitable(score):
                score = await score
            self._record(decision, response, score, started)
        except Exception:
            self.state.once.error("shadow", "tally: a shadow call failed", exc_info=True)
        finally:
            self._release()

    def _score(self, request: dict[str, Any], response: Any) -> Any:
        scorer = self.state.scorer
        if scorer is None:
            return None
        try:
            return scorer(request, response)
        except Exception as exc:
            self.state.scorer_failed(exc)
            return None

    def _failed(self, decision: Any, exc: BaseException, started: float) -> None:
        self.state.tally.telemetry(decision, success=False, error=error_class(exc),
                                   latency_ms=(time.perf_counter() - started) * 1000.0)

    def _record(self, decision: Any, response: Any, score: Any, started: float) -> None:
        hidden = getattr(response, "_hidden_params", None)
        cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
        usage = getattr(response, "usage", None)
        self.state.tally.telemetry(
            decision, success=True, quality=self.state.quality(score),
            input_tokens=getattr(usage, "prompt_tokens", None),
            output_tokens=getattr(usage, "completion_tokens", None),
            latency_ms=(time.perf_counter() - started) * 1000.0,
            cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        )
        with self._lock:
            self.made += 1

    def wait(self, timeout: float | None) -> bool:
        """Until every shadow started so far has been recorded (``tally.flush``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._pending == 0:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
