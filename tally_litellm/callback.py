"""TallyCallback: the LiteLLM logger that reports each routed attempt to Tally."""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from litellm.integrations.custom_logger import CustomLogger

from tally_litellm._attempts import Attempt
from tally_litellm.plugin import plugin_signal

if TYPE_CHECKING:
    from tally_litellm.strategy import TallyStrategy

__all__ = ["TallyCallback"]

_NOT_ERROR_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]")


class TallyCallback(CustomLogger):
    """Sends ``tally.telemetry`` for every attempt its ``TallyStrategy`` routed.

    ``TallyStrategy.install`` registers it in ``litellm.callbacks``; it ignores
    calls the strategy did not route. LiteLLM calls the sync hooks for
    ``router.completion`` and the async ones for ``router.acompletion``; both
    pairs are here. Each attempt is reported once, joined to its decision by
    the ``litellm_call_id`` the strategy gave it (a routing plugin, which
    cannot set one, leaves its own id in its routing signal):

    - success: tokens, latency, LiteLLM's ``response_cost``, and the scorer's
      quality if there is a scorer;
    - failure (an exception, a timeout, a content-policy error):
      ``success=False`` with the exception's class name as ``error``, never
      its message;
    - a retry or a fallback is its own attempt, reported for the model that
      served it (or failed).

    Hooks never raise into LiteLLM, and do no I/O: ``tally.telemetry`` only
    enqueues.
    """

    _strategy: TallyStrategy

    def __init__(self, strategy: TallyStrategy) -> None:
        super().__init__()
        # LiteLLM de-duplicates loggers by class and public scalar attributes:
        # a distinct name keeps two strategies' callbacks apart.
        self.name = f"tally-{uuid.uuid4().hex[:12]}"
        self._strategy = strategy

    # LiteLLM passes these by keyword: the parameter names are its contract.

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

    # -- reporting -----------------------------------------------------------

    def _report(
        self, kwargs: Any, response: Any, start: Any, end: Any, *, success: bool
    ) -> None:
        attempt = None
        try:
            found = self._outcome(kwargs, start, end, success)
            if found is None:
                return
            attempt, outcome = found
            if success and self._strategy.scorer is not None:
                score = self._score(attempt, outcome, kwargs, response)
                if inspect.isawaitable(score):
                    try:
                        score = _run_sync(score)
                    except Exception as exc:
                        self._scorer_failed(exc)
                        score = None
                outcome["quality"] = self._quality(score)
            self._send(attempt, outcome)
        except Exception:
            self._strategy._once.error("telemetry", "tally: could not report a call",
                                       exc_info=True)
        finally:
            if attempt is not None:
                self._strategy._attempts.finish(attempt)

    async def _areport(
        self, kwargs: Any, response: Any, start: Any, end: Any, *, success: bool
    ) -> None:
        attempt = None
        try:
            found = self._outcome(kwargs, start, end, success)
            if found is None:
                return
            attempt, outcome = found
            if success and self._strategy.scorer is not None:
                score = self._score(attempt, outcome, kwargs, response)
                if inspect.isawaitable(score):
                    try:
                        score = await score
                    except Exception as exc:
                        self._scorer_failed(exc)
                        score = None
                outcome["quality"] = self._quality(score)
            self._send(attempt, outcome)
        except Exception:
            self._strategy._once.error("telemetry", "tally: could not report a call",
                                       exc_info=True)
        finally:
            if attempt is not None:
                self._strategy._attempts.finish(attempt)

    def _outcome(
        self, kwargs: Any, start: Any, end: Any, success: bool
    ) -> tuple[Attempt, dict[str, Any]] | None:
        if not isinstance(kwargs, Mapping):
            return None
        attempts = self._strategy._attempts
        attempt = attempts.claim(kwargs.get("litellm_call_id"))
        if attempt is None and self._strategy._plugin is not None:
            # Plugin mode: the decision travels as a routing signal in the metadata.
            params = kwargs.get("litellm_params")
            info = plugin_signal(params.get("metadata") if isinstance(params, Mapping) else None)
            attempt = attempts.claim(info.get("call_id")) if info is not None else None
        if attempt is None:
            return None  # not a call this strategy routed, or reported already
        slo = kwargs.get("standard_logging_object")
        slo = slo if isinstance(slo, Mapping) else {}
        model = attempt.model
        # The deployment LiteLLM called, from this call's own params. Not
        # slo["model_id"]: that is read from the request metadata, which calls
        # sharing one metadata dict overwrite for each other.
        served = _model_info_id(kwargs)
        if isinstance(served, str) and (
            model is None or (attempt.deployment_id and served != attempt.deployment_id)
        ):
            model = self._strategy._name_of_id(served) or model
        input_tokens = _count(slo.get("prompt_tokens"))
        output_tokens = _count(slo.get("completion_tokens"))
        cost = _amount(slo.get("response_cost"))
        if cost is None:
            cost = _amount(kwargs.get("response_cost"))
        latency_s = _amount(slo.get("response_time"))
        if latency_s is None and isinstance(start, datetime) and isinstance(end, datetime):
            latency_s = max((end - start).total_seconds(), 0.0)
        latency_ms = latency_s * 1000.0 if latency_s is not None else None
        if slo.get("cache_hit") is True:
            # No model ran: the latency and the price are the cache's, not the model's.
            latency_ms, cost = None, None
        error = None
        if not success:
            if not input_tokens and not output_tokens:
                input_tokens = output_tokens = None  # unknown, not zero
            error = _error_class(kwargs, slo)
        outcome: dict[str, Any] = {
            "model": model or "unknown",
            "success": success,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "latency_ms": latency_ms,
            "cost_usd": cost,
            "error": error,
            "quality": None,
        }
        return attempt, outcome

    def _score(
        self, attempt: Attempt, outcome: Mapping[str, Any], kwargs: Mapping[str, Any], response: Any
    ) -> Any:
        scorer = self._strategy.scorer
        assert scorer is not None
        params = kwargs.get("litellm_params")
        metadata = params.get("metadata") if isinstance(params, Mapping) else None
        request = {
            "messages": kwargs.get("messages"),
            "model": outcome["model"],
            "model_group": attempt.model_group,
            "task_type": attempt.task_type,
            "decision_id": attempt.decision_id,
            "metadata": metadata if isinstance(metadata, Mapping) else {},
            "optional_params": kwargs.get("optional_params") or {},
        }
        try:
            return scorer(request, response)
        except Exception as exc:
            self._scorer_failed(exc)
            return None

    def _scorer_failed(self, exc: BaseException) -> None:
        self._strategy._once.error(
            "scorer", "tally: the scorer raised %s; the call counts by success alone",
            type(exc).__name__, exc_info=True,
        )

    def _quality(self, score: Any) -> float | None:
        if score is None:
            return None
        if isinstance(score, bool):
            return 1.0 if score else 0.0
        if isinstance(score, (int, float)) and 0.0 <= float(score) <= 1.0:
            return float(score)
        self._strategy._once.error(
            "scorer-value", "tally: the scorer returned %r; it must be 0-1, a bool or None",
            score,
        )
        return None

    def _send(self, attempt: Attempt, outcome: dict[str, Any]) -> None:
        tally = self._strategy.tally
        target: Any = attempt.decision if attempt.decision is not None else attempt.decision_id
        tally.telemetry(target, task_type=attempt.task_type, org=attempt.org, **outcome)

    def __repr__(self) -> str:
        return f"TallyCallback({self.name})"


def _run_sync(awaitable: Any) -> Any:
    """Await an async scorer from a sync hook (LiteLLM's logging thread has no loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def _wait() -> Any:
            return await awaitable

        return asyncio.run(_wait())
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    raise RuntimeError("an async scorer cannot run in a sync hook on a running event loop")


def _model_info_id(kwargs: Mapping[str, Any]) -> Any:
    params = kwargs.get("litellm_params")
    info = params.get("model_info") if isinstance(params, Mapping) else None
    return info.get("id") if isinstance(info, Mapping) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _amount(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _error_class(kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> str:
    """The exception's class name: never its message, which may quote the prompt."""
    exc = kwargs.get("exception")
    name: Any = type(exc).__name__ if isinstance(exc, BaseException) else None
    if not name:
        info = slo.get("error_information")
        name = info.get("error_class") if isinstance(info, Mapping) else None
    if not isinstance(name, str) or not name:
        return "UnknownError"
    return _NOT_ERROR_CHARS.sub("_", name)[:120]
