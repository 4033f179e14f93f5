"""A store filled with known calls through a real ``Tally``: two orgs, three
task types, five days, a holdout group and some provider errors. Shared by
the dashboard's API tests and its browser tests."""

from __future__ import annotations

import random
import time as _time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tally_core import Ledger, Tally
from tally_core.home import StoreDir

START = datetime(2025, 6, 2, tzinfo=timezone.utc).timestamp()  # a Monday, 00:00 UTC
DAYS = 5
MODELS = ["gpt-4.1-nano", "gpt-4o-mini", "gpt-4o"]
#: (org, task type, floor, calls, true quality per model)
WORKLOAD: list[tuple[str, str, float | None, int, dict[str, float]]] = [
    ("acme", "qa-simple", 0.8, 700, {"gpt-4.1-nano": 0.6, "gpt-4o-mini": 0.92, "gpt-4o": 0.95}),
    ("acme", "code-debug", 0.85, 300, {"gpt-4.1-nano": 0.3, "gpt-4o-mini": 0.7, "gpt-4o": 0.93}),
    ("acme", "summarisation", None, 200, {"gpt-4.1-nano": 0.8, "gpt-4o-mini": 0.9, "gpt-4o": 0.9}),
    ("beta", "qa-simple", 0.7, 200, {"gpt-4.1-nano": 0.85, "gpt-4o-mini": 0.9, "gpt-4o": 0.95}),
]
ERROR_EVERY = 23  # every 23rd call of an org fails with a provider error


class _Clock:
    """Stands in for the ``time`` module inside ``tally_core.router`` and
    ``tally_core.events`` so the calls spread over several days (events are
    stamped with ``time.time()``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return _time.monotonic()


def build_store(where: Path, seed: int = 7) -> dict[str, Any]:
    """Fill ``where`` with the workload; return what was sent, per org."""
    with pytest.MonkeyPatch.context() as mp:
        clock = _Clock(START)
        mp.setattr("tally_core.router.time", clock)
        mp.setattr("tally_core.events.time", clock)  # call events are stamped there
        return _fill(where, clock, seed)


def _fill(where: Path, clock: _Clock, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    plan = [(org, tt, fl, q) for org, tt, fl, n, q in WORKLOAD for _ in range(n)]
    rng.shuffle(plan)
    sent: dict[str, dict[str, int]] = {}
    step = DAYS * 86400.0 / len(plan)
    with Tally(MODELS, fallback="gpt-4o", store=str(where), seed=seed, background=False,
               holdout=0.1) as tally:  # fmt: skip
        for i, (org, tt, fl, quality) in enumerate(plan):
            clock.now = START + i * step
            d = tally.route(task_type=tt, org=org, quality_floor=fl)
            per = sent.setdefault(org, {"calls": 0, "errors": 0})
            per["calls"] += 1
            if per["calls"] % ERROR_EVERY == 0:
                per["errors"] += 1
                tally.telemetry(d, success=False, error="RateLimitError", latency_ms=50.0,
                                input_tokens=800, output_tokens=0)  # fmt: skip
                continue
            ok = rng.random() < quality[d.model]
            tally.telemetry(
                d,
                quality=1.0 if ok else 0.0,
                slugs=None if ok else ["incomplete"],
                input_tokens=800,
                output_tokens=rng.randint(100, 300),
                latency_ms=rng.uniform(200, 900),
            )
    return sent


# Fixtures for the modules that import them (each module builds its own store
# once): `store` and `ledger`.


@pytest.fixture(scope="module", name="store")
def store_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The store directory and what was sent to it, per org."""
    where = tmp_path_factory.mktemp("dash") / "store"
    return where, build_store(where)


@pytest.fixture(scope="module", name="ledger")
def ledger_fixture(store: tuple[Path, dict[str, Any]]) -> Iterator[Ledger]:
    """The store's ledger, read-only."""
    led = Ledger(StoreDir(store[0]).ledger, readonly=True)
    yield led
    led.close()
