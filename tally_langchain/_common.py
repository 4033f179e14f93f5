"""Helpers shared by ``ChatTally`` and ``TallyCallbackHandler``.

Everything here runs on the caller's thread (or the event loop) inside a
LangChain call, so it does O(1) work and never raises into the chain.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from tally_core import Tally

__all__ = [
    "DEFAULT_TASK_TYPE",
    "TALLY_MODEL_KEY",
    "LogOnce",
    "Scorer",
    "error_name",
    "llm_output_tokens",
    "outcome",
    "send_telemetry",
    "usage_tokens",
]

log = logging.getLogger("tally.langchain")

DEFAULT_TASK_TYPE = "general"
# ChatTally puts this key in its child run's metadata; TallyCallbackHandler
# skips runs that carry it, because ChatTally has already recorded them.
TALLY_MODEL_KEY = "tally_model"

Scorer = Callable[[Sequence[BaseMessage], BaseMessage], float | bool | None]
"""``fn(messages, ai_message) -> float | bool | None``: a quality score in 0-1,
True/False for pass/fail, or None for "no opinion" (quality may come later
through ``tally.feedback``)."""

_BAD_ERROR_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]+")


class LogOnce:
    """Logs the first failure of each kind at WARNING, later ones at DEBUG.

    Adapters fail open: an error in Tally must be visible without flooding
    the log of an application that makes thousands of calls a minute.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        with self._lock:
            first = kind not in self._seen
            self._seen.add(kind)
            self.counts[kind] = self.counts.get(kind, 0) + 1
        detail = f"{message}: {type(exc).__name__}: {exc}" if exc is not None else message
        if first:
            log.warning("%s (logged once; later ones at DEBUG)", detail)
        else:
            log.debug("%s", detail)


def error_name(exc: BaseException) -> str:
    """The error's class name, in the form ``Tally.telemetry`` accepts.

    Never the message: messages can quote the prompt.

    >>> error_name(TimeoutError("the prompt was ..."))
    'TimeoutError'
    """
    name = _BAD_ERROR_CHARS.sub("_", type(exc).__name__).strip("_") or "Error"
    return name[:120]


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
    """The quality part of a successful call's telemetry.

    No scorer: ``{"success": True}`` (Tally counts it as quality 1 until
    feedback replaces it). A score: ``{"quality": q}``. A scorer that returns
    None ("no opinion"), raises or returns something else: ``{}``, so the
    call is logged with no quality and ``tally.feedback`` can add it later.
    """
    if scorer is None:
        return {"success": True}
    if message is None:
        return {}
    try:
        result = scorer(list(messages or ()), message)
    except Exception as exc:
        warn("scorer", "tally_langchain: the scorer raised; call recorded without quality", exc)
        return {}
    if result is None:
        return {}
    if isinstance(result, bool):
        return {"quality": 1.0 if result else 0.0}
    if isinstance(result, (int, float)) and 0.0 <= float(result) <= 1.0:
        return {"quality": float(result)}
    warn(
        "scorer-value",
        "tally_langchain: the scorer must return a number in 0-1, a bool or None, "
        f"got {type(result).__name__}; call recorded without quality",
    )
    return {}


def send_telemetry(tally: Tally, warn: LogOnce, decision: Any, **fields: Any) -> None:
    """``tally.telemetry(...)``, never raising into the chain."""
    try:
        tally.telemetry(decision, **fields)
    except Exception as exc:
        warn("telemetry", "tally_langchain: telemetry was not recorded", exc)
