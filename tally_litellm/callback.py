"""TallyCallback: the LiteLLM logger that reports each routed attempt to Tally."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from tally_core.adapters import run_sync
from tally_litellm._attempts import Attempt
from tally_litellm._routing import RoutingState

__all__ = ["TallyCallback"]

_CALLBACK_LISTS = ("callbacks", "success_callback", "failure_callback",
                   "_async_success_callback", "_async_failure_callback", "input_callback")


class TallyCallback(CustomLogger):
    """Sends ``tally.telemetry`` for every attempt its routing state routed.

    ``TallyStrategy.install`` registers it in ``litellm.callbacks``; it ignores
    calls Tally did not route. LiteLLM calls the sync hooks for
    ``router.completion`` and the async ones for ``router.acompletion``; each
    pair shares one body. Each attempt is reported once, joined to its
    decision by its ``litellm_call_id``:

    - success: tokens, latency, LiteLLM's ``response_cost``, and the scorer's
      quality if there is a scorer;
    - failure (an exception, a timeout, a content-policy error):
      ``success=False`` with the exception's class name as ``error``, never
      its message;
    - a retry or a fallback is its own attempt, reported for the model that
      served it (or failed).

    Hooks never raise into LiteLLM and do no I/O: ``tally.telemetry`` only
    enqueues.
    """

    state: RoutingState | None  # None: a proxy handler not bound yet (it ignores every call)

    def __init__(self, state: RoutingState) -> None:
        super().__init__()
        # LiteLLM de-duplicates loggers by class and public scalar attributes:
        # a distinct name keeps two strategies' callbacks apart.
        self.name = f"tally-{uuid.uuid4().hex[:12]}"
        self.state = state

    def register(self) -> None:
        """Join ``litellm.callbacks`` (once)."""
        if not any(cb is self for cb in litellm.callbacks):
            litellm.callbacks.append(self)

    def unregister(self) -> None:
        """Leave every LiteLLM callback list."""
        for name in _CALLBACK_LISTS:
            lst = getattr(litellm, name, None)
            if isinstance(lst, list):
                lst[:] = [cb for cb in lst if cb is not self]

    # LiteLLM passes these by keyword: the parameter names are its contract.

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        state = self.state
        if state is None:
            return
        try:
            if isinstance(kwargs, dict):
                state.bind_call(kwargs)
        except Exception:
            state.once.error("bind", "tally: could not join a call to its decision",
                             exc_info=True)

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._report(kwargs, response_obj, start_time, end_time, success=True)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._report(kwargs, response_obj, start_time, end_time, success=False)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._areport(kwargs, response_obj, start_time, end_time, success=True)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._areport(kwargs, response_obj, start_time, end_time, success=False)

    # -- reporting: one body, two ways to wait for an async scorer -----------

    def _report(self, kwargs: Any, response: Any, start: Any, end: Any, *, success: bool) -> None:
        state = self.state
        found = self._begin(kwargs, response, start, end, success)
        if found is None or state is None:
            return
        attempt, outcome, score = found
        try:
            if inspect.isawaitable(score):
                try:
                    score = run_sync(score)
                except Exception as exc:
                    state.scorer_failed(exc)
                    score = None
            self._end(state, attempt, outcome, score)
            # Before the attempt counts as finished: a flush that sees it finished
            # must also see its shadow copy pending.
            state.shadow_runner.after(attempt, outcome, kwargs, is_async=False)
        finally:
            state.finish(attempt)

    async def _areport(
        self, kwargs: Any, response: Any, start: Any, end: Any, *, success: bool
    ) -> None:
        state = self.state
        found = self._begin(kwargs, response, start, end, success)
        if found is None or state is None:
            return
        attempt, outcome, score = found
        try:
            if inspect.isawaitable(score):
                try:
                    score = await score
                except Exception as exc:
                    state.scorer_failed(exc)
                    score = None
            self._end(state, attempt, outcome, score)
            state.shadow_runner.after(attempt, outcome, kwargs, is_async=True)
        finally:
            state.finish(attempt)

    def _begin(
        self, kwargs: Any, response: Any, start: Any, end: Any, success: bool
    ) -> tuple[Attempt, dict[str, Any], Any] | None:
        """The attempt, its outcome and the scorer's (maybe pending) answer. Never raises."""
        state = self.state
        attempt = None
        try:
            if state is None or not isinstance(kwargs, dict):
                return None
            attempt = state.claim(kwargs)
            if attempt is None:
                return None  # not a call Tally routed, or reported already
            outcome = state.outcome(attempt, kwargs, start, end, success)
            score = None
            if success and state.scorer is not None:
                score = state.score(attempt, outcome, kwargs, response)
            return attempt, outcome, score
        except Exception:
            if state is not None:
                state.once.error("telemetry", "tally: could not report a call", exc_info=True)
                if attempt is not None:
                    state.finish(attempt)
            return None

    def _end(
        self, state: RoutingState, attempt: Attempt, outcome: dict[str, Any], score: Any
    ) -> None:
        try:
            if outcome["success"] and state.scorer is not None and outcome["quality"] is None:
                outcome["quality"] = state.quality(score)
            state.send(attempt, outcome)
        except Exception:
            state.once.error("telemetry", "tally: could not report a call", exc_info=True)

    def __repr__(self) -> str:
        return f"TallyCallback({self.name})"
