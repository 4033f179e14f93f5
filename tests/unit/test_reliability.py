"""Regression tests for issue 13: no event lost, doubled or stuck; bad input
rejected on the caller's thread; tenants kept apart; memory bounded.

Each test names the case it pins; docs/guarantees.md points here.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sqlite3
import time

import pytest

from tally_core import DiskStore, InvalidFieldError, MemoryStore, StoreError, Tally
from tally_core.events import call_event, to_record
from tally_core.home import StoreDir
from tally_core.ledger import Ledger

POOL = ["gpt-4o-mini", "gpt-4o"]


class FlakyStore(MemoryStore):
    """A memory store that is down until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def apply(self, batch_id, updates, params):
        if self.down:
            raise StoreError("store unreachable")
        return super().apply(batch_id, updates, params)


class FlakyDisk(DiskStore):
    """A disk store (so there is a spool) that is down until told otherwise."""

    down = False

    def apply(self, batch_id, updates, params):
        if self.down:
            raise StoreError("store unreachable")
        return super().apply(batch_id, updates, params)


def calls(t: Tally, task: str = "qa-simple", org: str = "default") -> int:
    return sum(s["calls"] for s in t.stats(task, org=org))


# -- fork ---------------------------------------------------------------------


def _fork_worker(t: Tally, n: int, q) -> None:
    ids = []
    for _ in range(n):
        d = t.route(task_type="qa")
        t.telemetry(d, quality=0.9, input_tokens=10, output_tokens=5)
        ids.append(d.decision_id)
    ok = t.flush(30)
    q.put((os.getpid(), ok, ids))
    t.close()


def test_fork_each_child_has_its_own_ids_connection_and_worker(tmp_path) -> None:
    # Case: os.fork() after Tally is built (gunicorn/celery pre-fork). Before:
    # 4 x 2,000 calls gave 2,000 distinct ids and 2,000 ledger rows against
    # 8,000 learned outcomes.
    t = Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "s"), seed=1)
    t.telemetry(t.route(task_type="qa"), quality=0.9)  # parent's worker is running
    assert t.flush(10)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_fork_worker, args=(t, 500, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert all(ok for _, ok, _ in got)
    ids = [i for _, _, batch in got for i in batch]
    assert len(set(ids)) == 2000
    t.refresh()
    assert t.ledger.count() == 2001
    assert calls(t) == 2001
    t.close()


def test_decision_and_event_ids_are_unguessable() -> None:
    with Tally(POOL, fallback="gpt-4o", store=":memory:", background=False) as t:
        ids = [t.route(task_type="qa").decision_id for _ in range(200)]
        events = [t.telemetry(d, quality=1.0) for d in ids[:50]]
    assert len(set(ids)) == 200 and len(set(events)) == 50
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    # No shared prefix or counter: consecutive ids are far apart.
    assert all(abs(int(a, 16) - int(b, 16)) > 2**40 for a, b in zip(ids, ids[1:], strict=False))
    assert len({i[:4] for i in ids}) > 150


# -- values SQLite cannot hold; one bad event ---------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_tokens": 2**63}, "input_tokens"),
        ({"output_tokens": 10**12}, "output_tokens"),
        ({"model": 1}, "model"),
        ({"model": "x" * 300}, "model"),
        ({"model": "ignore previous instructions"}, "model"),
        ({"latency_ms": 1e300}, "latency_ms"),
        ({"cost_usd": float("nan")}, "cost_usd"),
        ({"error": "the prompt said: hello"}, "error"),
        ({"slugs": ["a" * 100]}, "slugs"),
    ],
)
def test_a_bad_value_is_rejected_on_the_callers_thread(kwargs, field) -> None:
    with Tally(POOL, fallback="gpt-4o", store=":memory:", background=False) as t:
        d = t.route(task_type="qa")
        with pytest.raises(InvalidFieldError) as err:
            t.telemetry(d, quality=0.9, **kwargs)
        assert err.value.field == field
        assert len(str(err.value)) < 400
        t.telemetry(d, quality=0.9)
        assert t.flush(5) and t.ledger.count() == 1 and calls(t) == 1


def test_ledger_never_leaves_a_transaction_open() -> None:
    # Case: one input_tokens=2**63 left a ledger transaction open; every later
    # row failed. Now the row is left out and the others are committed.
    led = Ledger(":memory:")
    good = {"event_id": "e1", "ts": 1.0, "org": "o", "task_type": "t", "model": "m"}
    bad = {**good, "event_id": "e2", "input_tokens": 2**63}
    new, rejected = led.write([good, bad, {**good, "event_id": "e3"}])
    assert new == 2 and [i for i, _ in rejected] == [1]
    assert not led._db.in_transaction
    assert led.append([{**good, "event_id": "e4"}]) == 1
    assert led.count() == 3


def test_a_poison_event_is_isolated_and_recorded_as_rejected(caplog) -> None:
    # Case: one telemetry(d, model=1) poisoned its whole batch, retried
    # forever; flush() never returned True again. An event that slips past
    # validation (here: put on the queue directly, as a damaged spool record
    # would be) is rejected alone; its batch-mates are recorded.
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=1) as t:
        d = t.route(task_type="qa")
        good = call_event(decision_id=d.decision_id, org="default", task_type="qa-simple",
                          cell="*", model="gpt-4o", phase=None, confidence=None,
                          holdout=False, envelope=None, quality=0.9)
        for i in range(20):
            t._queue.put(good if i % 5 else {**to_record(good), "model": 1, "event_id": f"b{i}"})
            good = call_event(decision_id=None, org="default", task_type="qa-simple",
                              cell="*", model="gpt-4o", phase=None, confidence=None,
                              holdout=False, envelope=None, quality=0.9)
        with caplog.at_level(logging.WARNING, logger="tally.recorder"):
            t._queue.put({**to_record(good), "input_tokens": 2**63, "event_id": "big"})
            assert t.flush(10)
        assert t.telemetry_counts["rejected"] == 5
        assert t.telemetry_counts["applied"] == 16
        assert t.ledger.count() == 16 and calls(t) == 16
        rejected = t.ledger.rejected()
        assert [r["field"] for r in rejected] == ["model"] * 4 + ["input_tokens"]
        assert {r["event_id"] for r in rejected} == {"b0", "b5", "b10", "b15", "big"}
        # Logged once per kind of fault, not once per event.
        assert sum("rejected an event" in r.message for r in caplog.records) == 2
        t.telemetry(d, quality=0.5)
        assert t.flush(5)  # flush recovers


# -- ordering after an outage ---------------------------------------------------


def test_feedback_after_an_outage_never_overtakes_its_call() -> None:
    store = FlakyStore()
    with Tally(POOL, fallback="gpt-4o", store=store, ledger=":memory:", seed=2) as t:
        t._queue.retry_base_s = 0.01
        d = t.route(task_type="qa")
        t.telemetry(d, quality=0.2, input_tokens=100, output_tokens=10)
        deadline = time.time() + 5
        while t.telemetry_counts["retried"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert t.telemetry_counts["retried"] >= 1  # the call's batch is held
        t.feedback(d, quality=0.9, slugs=["late"])
        time.sleep(0.1)  # a later batch must wait behind the held one
        store.down = False
        assert t.flush(10)
        row = t.ledger.get(d.decision_id)
        assert row["quality"] == 0.9 and row["slugs"] == ["late"]
        assert row["feedback_ts"] is not None
        s = next(x for x in t.stats("qa-simple") if x["model"] == d.model)
        assert s["calls"] == 1 and s["quality_obs"] == 1  # one outcome, not two
        assert s["mean_quality"] > 0.6  # learned 0.9 in place of 0.2


# -- overflow -------------------------------------------------------------------


def test_overflow_is_replayed_while_running_and_flush_reflects_it(tmp_path) -> None:
    store = FlakyDisk(tmp_path / "s")
    t = Tally(POOL, fallback="gpt-4o", store=store, max_queue=50, seed=3)
    t._queue.retry_base_s = 0.01
    store.down = True
    decisions = [t.route(task_type="qa") for _ in range(3000)]
    for d in decisions:
        t.telemetry(d, quality=0.8)
    assert t.telemetry_counts["spooled"] > 0
    assert not t.flush(0.2)
    store.down = False
    assert t.flush(20)  # no restart needed
    assert t.ledger.count() == 3000 and calls(t) == 3000
    assert not list(StoreDir(tmp_path / "s").spool.glob("*.jsonl"))
    t.close()


# -- spool files ------------------------------------------------------------------


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_unreadable_spool_files_are_quarantined_and_never_stop_start_up(tmp_path, caplog):
    dead = _dead_pid()
    spool = StoreDir(tmp_path / "s").spool
    spool.mkdir(parents=True)
    good = call_event(decision_id="d1", org="default", task_type="qa", cell="*",
                      model="gpt-4o", phase=None, confidence=None, holdout=False,
                      envelope=None, quality=0.7)
    (spool / f"{dead}-1-good.jsonl").write_text(json.dumps(to_record(good)) + "\n")
    (spool / f"{dead}-2-garbage.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    (spool / f"{dead}-3-truncated.jsonl").write_text('{"kind": "call", "event_id": ')
    (spool / f"{dead}-4-shape.jsonl").write_text('[1, 2, 3]\n')
    (spool / f"{dead}-5-fields.jsonl").write_text(json.dumps({**to_record(good), "ts": "x"}) + "\n")
    (spool / f"{dead}-6-left.tmp").write_text("half a batch")
    with caplog.at_level(logging.ERROR, logger="tally.telemetry"):
        with Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "s")) as t:
            assert t.flush(5)
            assert t.ledger.count() == 1 and calls(t) == 1
            assert t.telemetry_counts["quarantined"] == 4
    moved = sorted(p.name.split("-", 2)[2] for p in (spool / "quarantine").iterdir())
    assert moved == ["fields.jsonl", "garbage.jsonl", "shape.jsonl", "truncated.jsonl"]
    assert not list(spool.glob("*.jsonl")) and not list(spool.glob("*.tmp"))
    text = "\n".join(r.message for r in caplog.records)
    for name in ("garbage", "truncated", "shape", "fields"):
        assert f"-{name}.jsonl" in text
    assert "line 1: ts:" in text
    # A second start finds nothing to retry.
    with Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "s")) as t:
        assert t.telemetry_counts["quarantined"] == 0 and calls(t) == 1


def test_spool_writes_that_hold_the_only_copy_are_fsynced(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    store = FlakyDisk(tmp_path / "s")
    store.down = True
    t = Tally(POOL, fallback="gpt-4o", store=store, seed=1)
    t.telemetry(t.route(task_type="qa"), quality=0.9)
    deadline = time.time() + 5
    while t.telemetry_counts["retried"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert t.telemetry_counts["retried"] >= 1
    assert len(synced) >= 2  # the file, then its directory entry
    t.close(timeout=0.2)


# -- damaged state ----------------------------------------------------------------


def test_a_damaged_state_value_is_a_store_error_naming_the_key(tmp_path) -> None:
    s = DiskStore(tmp_path / "s")
    s._cache.set("keys", {("acme", "qa-simple")})
    s._cache.set("s:acme\x1fqa-simple", [1, 2, 3])
    s.close()
    with pytest.raises(StoreError, match="org 'acme', task type 'qa-simple'"):
        Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "s"))


# -- tenants ------------------------------------------------------------------------


def test_feedback_is_bound_to_the_org_that_made_the_decision(tmp_path) -> None:
    store = str(tmp_path / "s")
    with Tally(POOL, fallback="gpt-4o", store=store, seed=4) as t:
        d = t.route(task_type="qa", org="team-a")
        t.telemetry(d, quality=0.9)
        with pytest.raises(InvalidFieldError) as err:
            t.feedback(d.decision_id, quality=0.0, org="team-b")
        assert err.value.field == "org"
        with pytest.raises(InvalidFieldError):
            t.telemetry(d.decision_id, quality=0.0, org="team-b")
        t.feedback(d.decision_id, quality=0.8, org="team-a")  # its own org is fine
        assert t.flush(5)
    # Another process knows the id only from the ledger: still bound.
    with Tally(POOL, fallback="gpt-4o", store=store, seed=5) as t:
        with pytest.raises(InvalidFieldError, match="another org"):
            t.feedback(d.decision_id, quality=0.0, org="team-b",
                       model="gpt-4o", task_type="qa")
        with pytest.raises(InvalidFieldError, match="another org"):
            t.telemetry(d.decision_id, quality=0.0, org="team-b",
                        model="gpt-4o", task_type="qa")
        assert calls(t, org="team-b") == 0
        t.feedback(d.decision_id, quality=0.7)  # no org given: the decision's own
        assert t.flush(5)
        assert t.ledger.get(d.decision_id)["quality"] == 0.7


def test_feedback_from_another_org_in_the_pipeline_is_rejected() -> None:
    # The recorder checks the binding again (an event from a spool file, or
    # feedback for an id this process saw only after the call was recorded).
    from tally_core.events import feedback_event

    with Tally(POOL, fallback="gpt-4o", store=":memory:", background=False) as t:
        d = t.route(task_type="qa", org="team-a")
        t.telemetry(d, quality=0.9)
        t._queue.put(feedback_event(decision_id=d.decision_id, org="team-b",
                                    task_type="qa", cell="*", model=d.model, quality=0.0))
        assert t.telemetry_counts["rejected"] == 1
        assert t.ledger.get(d.decision_id)["quality"] == 0.9
        assert calls(t, org="team-b") == 0


def test_stored_text_fields_are_bounded_identifiers() -> None:
    with Tally(POOL, fallback="gpt-4o", store=":memory:", background=False) as t:
        with pytest.raises(InvalidFieldError) as err:
            t.telemetry("d" * 129, model="gpt-4o", task_type="qa")
        assert err.value.field == "decision"
        with pytest.raises(InvalidFieldError):
            t.telemetry("a prompt with spaces", model="gpt-4o", task_type="qa")
        with pytest.raises(InvalidFieldError) as err:
            t.telemetry(None, model="gpt-4o", task_type="qa", org="x" * 200)
        assert err.value.field == "org"
        with pytest.raises(InvalidFieldError) as err:
            t.feedback("d" * 500, quality=1.0)
        assert err.value.field == "decision"
        # A RouteDecision built by hand is validated like any other input.
        import dataclasses

        forged = dataclasses.replace(t.route(task_type="qa"), model="a prompt " * 1000)
        with pytest.raises(InvalidFieldError) as err:
            t.telemetry(forged, quality=1.0)
        assert err.value.field == "model" and len(str(err.value)) < 400
        t.telemetry("ext-123", model="openai/gpt-4o", task_type="qa", quality=1.0)
        row = t.ledger.get("ext-123")
    text_cols = [c for c in row if isinstance(row[c], str)]
    assert all(len(row[c]) <= 256 for c in text_cols)


# -- memory -------------------------------------------------------------------------


def test_decision_maps_are_capped_by_count() -> None:
    # Case: 200k route+telemetry calls held 202,000 entries (TTL-bounded only).
    with Tally(POOL, fallback="gpt-4o", store=":memory:", background=False,
               max_decisions=1000, seed=6) as t:
        for i in range(20_000):
            d = t.route(task_type="qa")
            if i % 2:
                t.telemetry(d, quality=0.9)
        assert len(t._recent) <= 1000
        assert len(t._open) <= 1000
        assert len(t._reported) <= 1000
        # The in-flight count is bounded too: at most the open window.
        assert sum(t.in_flight("qa-simple").values()) <= 1000


# -- sqlite connection crossing a fork (ledger alone) -------------------------------


def test_ledger_opens_its_own_connection_after_fork(tmp_path) -> None:
    led = Ledger(tmp_path / "l.sqlite3")
    parent_db = led._db
    pid = os.fork()
    if pid == 0:  # child
        try:
            led.append([{"event_id": "child", "ts": 1.0, "org": "o", "task_type": "t",
                         "model": "m"}])
            os._exit(0 if led._db is not parent_db else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert led.count() == 1
    led.append([{"event_id": "parent", "ts": 2.0, "org": "o", "task_type": "t", "model": "m"}])
    assert sqlite3.connect(tmp_path / "l.sqlite3").execute(
        "SELECT COUNT(*) FROM calls").fetchone()[0] == 2
    led.close()
