"""Failover: the per-model circuit breaker, alone and through routing."""

from __future__ import annotations

import time

import pytest

from tally_core import InvalidFieldError, Tally
from tally_core.breaker import Breakers

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]


def test_closed_open_half_open_closed_and_reopening_doubles():
    b = Breakers(window=6, min_calls=4, threshold=0.5, open_s=10.0, probes=2)
    for errored in (False, True, False):
        assert not b.record("m", errored=errored, now=0.0)
    assert b.state("m", now=0.0) == "closed"
    assert b.record("m", errored=True, now=1.0)  # 2 of 4: opens
    assert b.state("m", now=5.0) == "open" and "2 of its last 4 calls failed" in b.blocked(
        "m", now=5.0)
    assert not b.record("m", errored=True, now=6.0)  # a straggler changes nothing
    assert b.state("m", now=11.0) == "half-open" and b.blocked("m", now=11.0) is None
    assert b.allow("m", now=11.0) and b.allow("m", now=11.0) and not b.allow("m", now=11.0)
    assert "waiting for its probe" in b.blocked("m", now=11.0)
    assert b.record("m", errored=True, now=12.0)  # the probe failed: open, for 20 s now
    assert b.state("m", now=31.0) == "open" and b.state("m", now=32.5) == "half-open"
    assert b.allow("m", now=33.0)
    assert b.record("m", errored=False, now=34.0)  # the probe came back fine
    assert b.state("m", now=34.0) == "closed" and b.blocked("m", now=34.0) is None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"window": 0}, "breaker.window"), ({"threshold": 1.5}, "breaker.threshold"),
    ({"open_s": -1}, "breaker.open_s"), ({"probes": True}, "breaker.probes")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidFieldError) as err:
        Breakers(**kwargs)
    assert err.value.field == field


def teach(t: Tally, task: str) -> None:
    for m, q in (("gpt-4o-mini", 0.97), ("claude-haiku-4-5", 0.97), ("gpt-4o", 0.98)):
        for _ in range(40):
            t.telemetry(model=m, task_type=task, quality=q, input_tokens=300, output_tokens=80)


def test_an_outage_moves_every_task_type_off_the_model_and_it_comes_back():
    b = Breakers(window=10, min_calls=5, threshold=0.5, open_s=0.2)
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3, background=False,
               breaker=b) as t:
        for task in ("qa-simple", "summarisation"):
            teach(t, task)
        envs = [{"task_type": k, "quality_floor": 0.8} for k in ("qa-simple", "summarisation")]
        assert {t.route(e).model for e in envs for _ in range(20)} == {"gpt-4o-mini"}
        for _ in range(5):  # the provider goes down (seen on one task type only)
            t.telemetry(model="gpt-4o-mini", task_type="qa-simple", success=False,
                        error="InternalServerError")
        assert b.state("gpt-4o-mini") == "open"
        routed = [t.route(e) for e in envs for _ in range(50)]
        assert all(d.model != "gpt-4o-mini" for d in routed)
        assert "circuit open" in routed[-1].explain()
        time.sleep(0.25)  # half-open: one probe goes through, then none until it is back
        probes = [t.route(envs[1]) for _ in range(20)]
        probe = [d for d in probes if d.model == "gpt-4o-mini"]
        assert len(probe) == 1
        t.telemetry(probe[0], quality=0.97, input_tokens=300, output_tokens=80)
        assert b.state("gpt-4o-mini") == "closed"
        # Back where no error was seen (qa-simple's own erroring check, per task type,
        # holds it back there a while longer).
        assert {t.route(envs[1]).model for _ in range(20)} == {"gpt-4o-mini"}


def test_low_quality_is_not_an_outage_and_the_breaker_can_be_off():
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3, background=False) as t:
        for _ in range(20):
            t.telemetry(model="gpt-4o-mini", task_type="qa-simple", quality=0.0)
        assert t.breakers is not None and t.breakers.state("gpt-4o-mini") == "closed"
    with Tally(POOL, fallback="gpt-4o", store=":memory:", background=False, breaker=False) as t:
        assert t.breakers is None
        for _ in range(20):
            t.telemetry(model="gpt-4o-mini", task_type="qa-simple", success=False,
                        error="Timeout")
        d = t.route(task_type="qa-simple")
        assert "circuit" not in d.explain()


def test_when_every_model_is_open_the_fallback_answers_and_the_decision_says_so():
    b = Breakers(min_calls=3, threshold=0.5, open_s=60.0)
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=1, background=False,
               breaker=b) as t:
        for m in POOL:
            for _ in range(3):
                t.telemetry(model=m, task_type="qa-simple", success=False, error="Timeout")
        d = t.route(task_type="qa-simple", quality_floor=0.8)
        assert d.model == "gpt-4o" and d.phase == "fallback"
        assert d.explain().count("circuit open") == 3
