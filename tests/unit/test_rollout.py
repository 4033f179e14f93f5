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


def test_every_transition_is_in_the_ledger_with_its_figures(tmp_path):
    where = str(tmp_path / "tally")
    with tally(where) as t:
        t.rollout(CAND, steps=(0.1, 0.5, 1.0), min_calls=30, max_quality_drop=0.02)
        run(t, 400, {CAND: 0.95})
        rows = t.rollout_history(CAND)
        status = t.rollout_status(CAND)
    assert [r["action"] for r in rows] == ["advanced", "advanced", "done"]
    assert [(r["step"], r["share"]) for r in rows] == [(0, 0.1), (1, 0.5), (2, 1.0)]
    (cell,) = status.values()
    assert [r["reason"] for r in rows] == cell["history"]
    for r in rows:
        assert r["model"] == CAND and r["org"] == "default" and r["task_type"] == "summarisation"
        assert r["calls"] == 30 and abs(r["quality"] - 0.95) < 0.02
        assert r["incumbent_quality"] > 0.9
    # The CLI lists the same transitions from the ledger on disk.
    from typer.testing import CliRunner

    from tally_core.cli import app

    res = CliRunner().invoke(app, ["rollouts", "--store", where, "--format", "json",
                                   "--task-type", "summarization"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads(res.stdout) == rows
    res = CliRunner().invoke(app, ["rollouts", "--store", where])
    assert res.exit_code == 0 and "rolled" not in res.stdout and "done" in res.stdout


def test_a_rollback_is_in_the_ledger_once_and_survives_a_spool_replay(tmp_path):
    from tally_core.events import from_record, rollout_event, to_record

    with tally() as t:
        t.rollout(CAND, steps=(0.2, 1.0), min_calls=50, max_quality_drop=0.02)
        run(t, 400, {CAND: 0.7})
        (row,) = t.rollout_history()
        assert row["action"] == "rolled-back" and row["quality"] < 0.75
        ev = rollout_event(**{k: v for k, v in row.items()})
        assert from_record(to_record(ev)) == ev
        t.ledger.record_rollouts([ev, ev])  # a replayed batch: the event id is unique
        assert len(t.rollout_history(CAND)) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("action", "paused"), ("step", -1), ("share", 1.5), ("quality", float("nan")),
    ("reason", "x" * 301), ("task_type", ""), ("org", "a b")])
def test_a_bad_rollout_event_names_the_field(field, value):
    from tally_core.events import rollout_event

    good = dict(model="m", org="default", task_type="qa", action="advanced", step=0,
                share=0.1, calls=10, quality=0.9, incumbent_quality=0.9, reason="ok")
    with pytest.raises(InvalidFieldError) as err:
        rollout_event(**{**good, field: value})
    assert err.value.field == field


def test_a_rollouts_json_from_the_previous_version_is_imported(tmp_path):
    import json

    where = tmp_path / "tally"
    where.mkdir()
    cell = {"step": 1, "status": "running", "n": 7, "s": 6.5, "ss": 6.1, "inc_n": 20,
            "inc_s": 18.8, "inc_ss": 17.7, "history": ["passed 20% over 40 calls (...)"]}
    (where / "rollouts.json").write_text(json.dumps({CAND: {
        "spec": {"model": CAND, "steps": [0.2, 0.6, 1.0], "min_calls": 40,
                 "max_quality_drop": 0.02, "task_types": None},
        "cells": {"default/summarisation": cell}}}))
    with tally(str(where)) as t:
        (got,) = t.rollout_status(CAND).values()
        assert (got["step"], got["share"], got["calls"]) == (1, 0.6, 7)
        assert CAND in t.catalog.names
    assert not (where / "rollouts.json").exists()
    with tally(str(where)) as t:  # from the store now
        assert t.rollout_status(CAND)["default/summarisation"]["calls"] == 7


def test_stopping_a_rollout_on_one_instance_stops_it_on_another(tmp_path):
    where = str(tmp_path / "tally")
    with tally(where) as a, tally(where) as b:
        a.rollout(CAND, steps=(0.5, 1.0), min_calls=100)
        b.refresh()
        assert CAND in run(b, 40, {CAND: 0.95})
        assert a.stop_rollout(CAND) is True
        b.refresh()
        assert b.rollout_status(CAND) == {} and b.rollouts.models == []
        assert b.rollouts.share("default", "summarisation", CAND) == 0.0
