"""Gradual rollouts: advance step by step, roll back on a confident drop, survive a restart,
and never break the floor."""

from __future__ import annotations

import random

import pytest

from tally_core import InvalidFieldError, Tally

POOL = ["gpt-4o-mini", "gpt-4o"]
CAND = "claude-haiku-4-5"
ENV = {"task_type": "summarisation", "quality_floor": 0.8}


def run(t: Tally, calls: int, quality: dict[str, float], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    served = []
    for _ in range(calls):
        d = t.route(ENV)
        served.append(d.model)
        q = quality.get(d.model, 0.95)
        t.telemetry(d, quality=min(max(rng.gauss(q, 0.03), 0.0), 1.0), input_tokens=400,
                    output_tokens=100)
    return served


def tally(store: str = ":memory:") -> Tally:
    return Tally(POOL, fallback="gpt-4o", store=store, seed=2, background=False)


def test_a_good_candidate_advances_through_every_step():
    with tally() as t:
        t.rollout(CAND, steps=(0.1, 0.5, 1.0), min_calls=30, max_quality_drop=0.02)
        served = run(t, 400, {CAND: 0.95})
        (status,) = t.rollout_status(CAND).values()
        assert status["status"] == "done", status
        assert [h.split(" over")[0] for h in status["history"]] == [
            "passed 10%", "passed 50%", "passed 100%"]
        first = served[:100]
        assert 0.02 < first.count(CAND) / 100 < 0.3  # about 10% at the first step


def test_a_worse_candidate_rolls_itself_back_and_gets_no_more_rollout_calls():
    with tally() as t:
        t.rollout(CAND, steps=(0.2, 1.0), min_calls=50, max_quality_drop=0.02)
        served = run(t, 600, {CAND: 0.82})
        (status,) = t.rollout_status(CAND).values()
        assert status["status"] == "rolled-back" and status["share"] == 0.0
        assert "rolled back at 20%" in status["history"][-1]
        back_at = next(i for i in range(len(served)) if served[i:].count(CAND) == 0)
        assert back_at < 400 and served[:back_at].count(CAND) < 120


def test_the_rollout_survives_a_restart_on_a_disk_store(tmp_path):
    where = str(tmp_path / "tally")
    with tally(where) as t:
        t.rollout(CAND, steps=(0.2, 0.6, 1.0), min_calls=40)
        run(t, 220, {CAND: 0.95})
        before = t.rollout_status(CAND)
    (mid,) = before.values()
    assert mid["status"] == "running" and mid["step"] == 1, mid
    with tally(where) as t:  # built with the old pool: the rollout brings its model back
        assert t.rollout_status(CAND) == before  # step, status and the step's counts
        assert CAND in t.catalog.names
        # It carries on at 60% (until its 40 calls there pass the step).
        assert 18 <= run(t, 50, {CAND: 0.95}, seed=1).count(CAND) <= 42


def test_the_floor_holds_a_candidate_seen_failing_it_gets_no_calls():
    with tally() as t:
        t.add_model(CAND)
        for _ in range(40):
            t.telemetry(model=CAND, task_type="summarisation", quality=0.2, input_tokens=400,
                        output_tokens=100)
        t.rollout(CAND, steps=(0.5, 1.0), min_calls=20)
        assert CAND not in run(t, 200, {CAND: 0.2})


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"steps": (0.5, 0.1)}, "steps"), ({"steps": ()}, "steps"), ({"min_calls": 1}, "min_calls"),
    ({"max_quality_drop": 1.5}, "max_quality_drop")])
def test_bad_settings_name_the_field(kwargs, field):
    with tally() as t, pytest.raises(InvalidFieldError) as err:
        t.rollout(CAND, **kwargs)
    assert err.value.field == field
