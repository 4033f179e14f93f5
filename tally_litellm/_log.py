"""Log an adapter error once, count every occurrence, never raise."""

from __future__ import annotations

import logging
import threading

__all__ = ["OnceLog", "log"]

log = logging.getLogger("tally.litellm")


class OnceLog:
    """The first error of each kind is logged with its traceback; the rest are counted.

    An adapter that fails open on every call must not flood the log, but the
    first failure has to be loud enough to be noticed and fixed.

    >>> once = OnceLog()
    >>> for _ in range(3):
    ...     once.error("route", "routing failed: %s", "boom")
    >>> once.counts
    {'route': 3}
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def error(self, kind: str, msg: str, *args: object, exc_info: bool = False) -> None:
        with self._lock:
            n = self.counts.get(kind, 0) + 1
            self.counts[kind] = n
        if n == 1:
            log.warning(msg + " (logged once; later ones are counted)", *args, exc_info=exc_info)
        else:
            log.debug(msg, *args)
