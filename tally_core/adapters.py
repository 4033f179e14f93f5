"""The host-free fail-open kit every adapter uses.

An adapter (``tally_litellm``, ``tally_langchain``) turns its host's hooks
into ``Tally.route()`` and ``Tally.telemetry()`` and must never break the
user's LLM call. What that takes is the same in every host, so it lives here
once:

- ``OnceLog``: the first error of each kind is logged with its traceback,
  later ones are counted (an adapter that fails open on every call must not
  flood the log, but the first failure must be loud enough to be fixed);
- ``error_class``: an exception as the ``error`` field of telemetry, its class
  name and never its message (messages can quote the prompt);
- ``grade``: a scorer's answer as a quality in 0-1, or None;
- ``run_sync``: await a coroutine from a sync hook that has no event loop.

Nothing here imports a host.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["OnceLog", "error_class", "grade", "run_sync"]

T = TypeVar("T")

_NOT_ERROR_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]")
_MAX_ERROR_CHARS = 120


class OnceLog:
    """Log the first error of each kind (with its traceback), count every one, never raise.

    Parameters
    ----------
    logger
        Where the first occurrence of each kind goes (at WARNING); later ones
        go to DEBUG.

    >>> once = OnceLog(logging.getLogger("tally.example"))
    >>> for _ in range(3):
    ...     once.error("route", "routing failed: %s", "boom")
    >>> once.counts
    {'route': 3}
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger("tally.adapter")
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def error(self, kind: str, msg: str, *args: object, exc_info: bool = False) -> None:
        """Count an error of ``kind``; log it if it is the first of its kind."""
        try:
            with self._lock:
                n = self.counts.get(kind, 0) + 1
                self.counts[kind] = n
            if n == 1:
                self.logger.warning(
                    msg + " (logged once; later ones are counted)", *args, exc_info=exc_info
                )
            else:
                self.logger.debug(msg, *args)
        except Exception:  # logging itself failed (a broken handler): still never raise
            pass


def error_class(exc: BaseException | str | None) -> str:
    """The ``error`` field for a failed call: the exception's class name, safe to store.

    >>> error_class(TimeoutError("the prompt was: ..."))
    'TimeoutError'
    >>> error_class("litellm.RateLimitError <x>")
    'litellm.RateLimitError__x_'
    >>> error_class(None)
    'UnknownError'
    """
    name = type(exc).__name__ if isinstance(exc, BaseException) else exc
    if not isinstance(name, str) or not name:
        return "UnknownError"
    return _NOT_ERROR_CHARS.sub("_", name)[:_MAX_ERROR_CHARS]


def grade(score: Any) -> float | None:
    """A scorer's answer as a quality: a bool counts 1 or 0, a number must be in 0-1.

    Raises ``ValueError`` for anything else, so the adapter can log it once.

    >>> grade(True), grade(0.25), grade(None)
    (1.0, 0.25, None)
    """
    if score is None:
        return None
    if isinstance(score, bool):
        return 1.0 if score else 0.0
    if isinstance(score, (int, float)) and math.isfinite(score) and 0.0 <= score <= 1.0:
        return float(score)
    raise ValueError(f"a score must be 0-1, a bool or None, got {score!r}"[:200])


def run_sync(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` from sync code that runs outside any event loop.

    Hosts call their sync hooks on worker threads with no loop; an async
    scorer is then run to completion here. On a thread whose loop is running
    that would deadlock, so it raises ``RuntimeError`` (and closes the
    coroutine) instead.

    >>> async def three() -> int:
    ...     return 3
    >>> run_sync(three())
    3
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def _wait() -> T:
            return await awaitable

        return asyncio.run(_wait())
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    raise RuntimeError("an async scorer cannot run in a sync hook on a running event loop")
