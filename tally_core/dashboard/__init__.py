"""``tally dashboard``: a local, read-only web app over a store's ledger and
learned state, and its JSON API (``/api/report``, ``/api/savings``,
``/api/calls``, ``/api/stats/{task_type}``). See ``docs/dashboard.md``.

Needs the ``dashboard`` extra (Starlette, Jinja2, plotly, uvicorn):
``pip install 'tally-router[dashboard]'``. ``check_host`` needs none of it:

>>> check_host("127.0.0.1", allow_remote=False)
False
>>> check_host("0.0.0.0", allow_remote=False)
Traceback (most recent call last):
...
tally_core.errors.InvalidFieldError: host: 0.0.0.0 is not a loopback address...
"""

from __future__ import annotations

from tally_core.dashboard.server import EXTRA_HINT, check_host, is_loopback, require_extra, serve

__all__ = ["EXTRA_HINT", "check_host", "is_loopback", "require_extra", "serve"]
