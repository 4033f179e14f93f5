"""Helpers shared by ``ChatTally`` and ``TallyCallbackHandler``.

Everything here runs on the caller's thread (or the event loop) inside a
LangChain call, so it does O(1) work and never raises into the chain.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from tally_core import Tally
from tally_core.adapters import OnceLog, error_class, run_sync

__all__ = [
    "DEFAULT_TASK_TYPE",
    "MIDDLEWARE_CALL",
    "TALLY_MODEL_KEY",
    "LogOnce",
    "Scorer",
    "error_name",
    "first_message",
    "llm_output_tokens",
    "result_tokens",
    "aoutcome",
    "outcome",
    "send_telemetry",
    "usage_tokens",
]

log = logging.getLogger("tally.langchain")

DEFAULT_TASK_TYPE = "general"
# ChatTally puts this key in its child run's metadata; TallyCallbackHandler
# skips runs that carry it, because ChatTally has already recorded them.
TALLY_MODEL_KEY = "tally_model"
# Set while a TallyMiddleware model call runs (to the handler observing its
# chat-model runs); TallyCallbackHandler skips those runs, already recorded.
MIDDLEWARE_CALL: ContextVar[Any] = ContextVar("tally_langchain_attempts", default=None)

Scorer = Callable[
    [Sequence[BaseMessage], BaseMessage],
    float | bool | None | Awaitable[float | bool | None],
]
"""``fn(messages, ai_message) -> float | bool | None`` (or an awaitable of one):
a quality in 0-1, True/False for pass/fail, or None for no grade (the call
then counts by success alone, until ``tally.feedback`` says otherwise)."""



class LogOnce(OnceLog):
    """``tally_core.adapters.OnceLog`` on the ``tally.langchain`` logger, called as
    ``warn(kind, message, exc)``: the first failure of each kind at WARNING, the
    rest counted (at DEBUG).

    Adapters fail open: an error in Tally must be visible without flooding
    the log of an application that makes thousands of calls a minute.
    """

    def __init__(self) -> None:
        super().__init__(log)

    def __call__(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        detail = f"{message}: {type(exc).__name__}: {exc}" if exc is not None else message
        self.error(kind, "%s", detail[:2000])


def error_name(exc: BaseException) -> str:
    """The error's class name, in the form ``Tally.telemetry`` accepts
    (``tally_core.adapters.error_class``). Never the message: messages can quote
    the prompt.

    >>> error_name(TimeoutError("the prompt was ..."))
    'TimeoutError'
    """
    return error_class(exc)


def usage_tokens(message: Any) -> tuple[int | None, int | None]:
    """``(input_tokens, output_tokens)`` from a message's ``usage_metadata``."""
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None, None
    return _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))


def llm_output_tokens(llm_output: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """Tokens from a legacy ``LLMResult.llm_output["token_usage"]`` (OpenAI style)."""
    if not llm_output:
        return None, None
    usage = llm_output.get("token_usage") or llm_output.get("usage")
    if not isinstance(usage, Mapping):
        return None, None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return _count(inp), _count(out)


def result_tokens(
    message: Any, llm_output: Mapping[str, Any] | None
) -> tuple[int | None, int | None]:
    """Tokens from the message's ``usage_metadata``, else from the legacy ``llm_output``."""
    tokens = usage_tokens(message)
    if tokens == (None, None):
        tokens = llm_output_tokens(llm_output)
    return tokens


def first_message(response: LLMResult) -> BaseMessage | None:
    """The message of a chat-model run's first generation, or None."""
    try:
        gen = response.generations[0][0]
    except IndexError:
        return None
    return gen.message if isinstance(gen, ChatGeneration) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def outcome(
    scorer: Scorer | None,
    messages: Sequence[BaseMessage] | None,
    message: BaseMessage | None,
    warn: LogOnce,
) -> dict[str, Any]:
    """The outcome part of a successful call's telemetry.

    ``{"success": True}``, plus ``quality`` when the scorer grades the answer.
    A scorer that returns None, raises, or returns something that is not a
    grade leaves the call counted by success alone (as ``tally_litellm``
    does); ``tally.feedback`` can replace that quality later. An async
    scorer is awaited here only when no event loop is running: on the async
    paths, ``aoutcome`` awaits it.
    """
    if scorer is None or message is None:
        return {"success": True}
    try:
        score = scorer(list(messages or ()), message)
        if inspect.isawaitable(score):
            score = run_sync(score)
    except Exception as exc:
        warn("scorer", "tally_langchain: the scorer raised; the call counts by success alone", exc)
        return {"success": True}
    return _graded(score, warn)


async def aoutcome(
    scorer: Scorer | None,
    messages: Sequence[BaseMessage] | None,
    message: BaseMessage | None,
    warn: LogOnce,
) -> dict[str, Any]:
    """``outcome`` for async code: an async scorer is awaited."""
    if scorer is None or message is None:
        return {"success": True}
    try:
        score = scorer(list(messages or ()), message)
        if inspect.isawaitable(score):
            score = await score
    except Exception as exc:
        warn("scorer", "tally_langchain: the scorer raised; the call counts by success alone", exc)
        return {"success": True}
    return _graded(score, warn)


def _graded(score: Any, warn: LogOnce) -> dict[str, Any]:
    if score is None:
        return {"success": True}
    if isinstance(score, bool):
        return {"success": True, "quality": 1.0 if score else 0.0}
    if isinstance(score, (int, float)) and 0.0 <= float(score) <= 1.0:
        return {"success": True, "quality": float(score)}
    warn(
        "scorer-value",
        "tally_langchain: the scorer must return a number in 0-1, a bool or None, "
        f"got {type(score).__name__}; the call counts by success alone",
    )
    return {"success": True}


def send_telemetry(tally: Tally, warn: LogOnce, decision: Any, **fields: Any) -> None:
    """``tally.telemetry(...)``, never raising into the chain."""
    try:
        tally.telemetry(decision, **fields)
    except Exception as exc:
        warn("telemetry", "tally_langchain: telemetry was not recorded", exc)
