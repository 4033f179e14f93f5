"""A bounded repr for error messages and log lines.

A caller's bad value is echoed so the error is useful, but never in full: a
1 MB string or a list nested 3,000 deep must not become a 2 MB message, a
``RecursionError``, or a log line quoting a prompt.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["brief", "cut"]

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxdict = 6


def brief(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to about ``limit`` characters and 3 levels deep.

    >>> brief("x" * 1_000_000)[:12], len(brief("x" * 1_000_000)) <= 120
    ("'xxxxxxxxxxx", True)
    >>> deep = []
    >>> for _ in range(3000):
    ...     deep = [deep]
    >>> brief(deep)
    '[[[[...]]]]'
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a hostile __repr__ must not replace the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def cut(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (a message, not a value: no quotes).

    >>> cut("abcdef", 5)
    'ab...'
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."
