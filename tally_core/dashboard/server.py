"""Serving the dashboard: the loopback rule, the extra check, uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from importlib.util import find_spec
from pathlib import Path

from tally_core.errors import InvalidFieldError

__all__ = ["EXTRA_HINT", "check_host", "is_loopback", "require_extra", "serve"]

EXTRA_HINT = "pip install 'tally-router[dashboard]'"
_NEEDS = ("starlette", "jinja2", "plotly", "uvicorn")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1).

    >>> is_loopback("localhost"), is_loopback("127.0.0.2"), is_loopback("[::1]")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("192.168.1.5"), is_loopback("example.com")
    (False, False, False)
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_host(host: str, *, allow_remote: bool) -> bool:
    """Refuse a non-loopback bind unless ``allow_remote``; True when the bind
    is non-loopback (and allowed), so the caller warns."""
    if is_loopback(host):
        return False
    if not allow_remote:
        raise InvalidFieldError(
            "host",
            f"{host} is not a loopback address: the dashboard shows your whole call log "
            "with no login, so it binds to 127.0.0.1; pass --allow-remote to serve it "
            "on another address anyway",
        )
    return True


def require_extra() -> None:
    """Raise ``ImportError`` naming the extra when a dashboard dependency is missing."""
    missing = [m for m in _NEEDS if find_spec(m) is None]
    if missing:
        raise ImportError(
            f"tally dashboard needs the 'dashboard' extra (missing: {', '.join(missing)}): "
            + EXTRA_HINT
        )


def serve(
    store: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    org: str | None = None,
    allow_remote: bool = False,
    fallback: str | None = None,
    refresh_s: float = 5.0,
    state: str | Path | None = None,
) -> None:
    """Serve the dashboard for a store directory or a ``postgresql://`` ledger
    (learned state from ``state``, see ``DashboardData.open``) until interrupted."""
    remote = check_host(host, allow_remote=allow_remote)
    require_extra()
    import uvicorn

    from tally_core.dashboard.app import create_app
    from tally_core.dashboard.data import DashboardData

    data = DashboardData.open(store, fallback=fallback, state=state)
    try:
        app = create_app(data, org=org, refresh_s=refresh_s)
        if remote:
            print(
                f"tally dashboard: WARNING: serving on {host}, not loopback: anyone who can "
                "reach this address can read the call log (no login).",
                file=sys.stderr,
            )
        shown = f"[{host}]" if ":" in host else host
        print(f"tally dashboard: http://{shown}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
        uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
    finally:
        data.close()
