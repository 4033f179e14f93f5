"""The recorder without a Tally: a batch in, state updates and ledger rows out."""

from __future__ import annotations

import pytest

from tally_core import InvalidFieldError, MemoryStore, StoreError, Tally
from tally_core.catalog import Catalog, ModelSpec
from tally_core.events import call_event, feedback_event, from_record, to_record
from tally_core.ledger import Ledger
from tally_core.recorder import Recorder

SPEC = ModelSpec(name="m", input_cost_per_mtok=1.0, output_cost_per_mtok=2.0)


def call(did: str | None, q: float | None = 0.9, org: str = "default", **kw):
    return call_event(decision_id=did, org=org, task_type="qa", cell="*", model="m",
                      phase="calibrate", confidence=0.5, holdout=False, envelope=None,
                      quality=q, **kw)


class CountingStore(MemoryStore):
    loads = 0

    def load(self, keys=None):
        self.loads += 1
        return super().load(keys)


def test_a_batch_becomes_updates_and_rows_with_the_stores_clocks() -> None:
    store, led = CountingStore(), Ledger(":memory:")
    rec = Recorder(store, led, Catalog([SPEC]))
    seen = []
    rec.subscribe(seen.append)
    for b in range(10):
        out = rec.record(f"b{b}", [call(f"d{b}-{i}", input_tokens=1000) for i in range(5)])
        assert out.applied == 5 and out.rejected == 0
    assert store.loads == 0  # nothing is read back after a batch
    assert [r[0] for r in led.select(["clock"])] == [float(c) for c in range(1, 51)]
    assert seen[-1].committed.states[("default", "qa-simple")]["clock"] == 50.0
    assert led.get("d3-1")["cost_usd"] == pytest.approx(0.001)


def test_the_recorders_rows_fill_every_ledger_column() -> None:
    from tally_core.ledger import COLUMNS

    rec = Recorder(MemoryStore(), Ledger(":memory:"), Catalog([SPEC]))
    _, row = rec._call(call("d1"))
    assert set(row) == {c for c, _ in COLUMNS}  # the ledger's one-call fast path


def test_two_replicas_on_one_store_write_the_clocks_the_store_committed() -> None:
    # A fleet: each replica has its own ledger, the state is shared. The
    # clocks in the two ledgers interleave without a collision.
    store = MemoryStore()
    a = Recorder(store, Ledger(":memory:"), Catalog([SPEC]))
    b = Recorder(store, Ledger(":memory:"), Catalog([SPEC]))
    for i in range(6):
        (a if i % 2 else b).record(f"x{i}", [call(f"d{i}-{j}") for j in range(3)])
    clocks = [r[0] for led in (a.ledger, b.ledger) for r in led.select(["clock"])]
    assert sorted(clocks) == [float(c) for c in range(1, 19)]


def test_feedback_in_the_same_batch_as_its_call_replaces_the_quality() -> None:
    rec = Recorder(MemoryStore(), Ledger(":memory:"), Catalog([SPEC]))
    c = call("d1", q=0.2)
    fb = feedback_event(decision_id="d1", org="default", task_type="qa", cell="*",
                        model="m", quality=0.8, slugs=["late"])
    rec.record("b", [c, fb])
    row = rec.ledger.get("d1")
    assert row["quality"] == 0.8 and row["slugs"] == ["late"] and row["feedback_ts"]
    arm = rec.store.load()[("default", "qa-simple")]["cells"]["*"]["m"]
    assert arm[11] == 1.0 and arm[18] == 1.0 and arm[1] == pytest.approx(0.8)


def test_a_replayed_batch_is_not_learned_twice_and_completes_the_ledger() -> None:
    class LedgerDown(Ledger):
        down = True

        def write(self, rows):
            if self.down:
                raise StoreError("ledger locked")
            return super().write(rows)

    led = LedgerDown(":memory:")
    rec = Recorder(MemoryStore(), led, Catalog([SPEC]))
    batch = [call(f"d{i}") for i in range(4)]
    with pytest.raises(StoreError):
        rec.record("b1", batch)  # the state committed, the ledger did not
    led.down = False
    out = rec.record("b1", batch)  # the queue's retry, same id
    assert out.committed.applied is False
    assert led.count() == 4
    assert [r[0] for r in led.select(["clock"])] == [1.0, 2.0, 3.0, 4.0]
    assert rec.store.load()[("default", "qa-simple")]["clock"] == 4.0


def test_bad_records_are_rejected_one_by_one() -> None:
    rec = Recorder(MemoryStore(), Ledger(":memory:"), Catalog([SPEC]))
    good = to_record(call("d1"))
    out = rec.record("b", [good, {**good, "event_id": "x", "model": 1}, ["not", "a", "dict"],
                           {**good, "event_id": "y", "kind": "prompt"}])
    assert (out.applied, out.rejected) == (1, 3)
    assert [r["field"] for r in rec.ledger.rejected()] == ["model", "event", "kind"]


def test_records_round_trip_and_are_validated() -> None:
    ev = call("d1", slugs=["ok"], latency_ms=12.5, error=None, success=True)
    assert from_record(to_record(ev)) == ev
    with pytest.raises(InvalidFieldError) as err:
        from_record({**to_record(ev), "input_tokens": -1})
    assert err.value.field == "input_tokens"
    with pytest.raises(InvalidFieldError) as err:
        from_record({**to_record(ev), "prompt": "hello"})
    assert err.value.field == "event"


def test_tally_hands_batches_to_its_recorder() -> None:
    with Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=":memory:",
               background=False) as t:
        assert t._queue._exporter is t.recorder
        t.telemetry(t.route(task_type="qa"), quality=1.0)
        assert t.ledger.count() == 1


def test_a_store_on_the_older_interface_still_records() -> None:
    class Legacy(MemoryStore):
        def apply(self, batch_id, updates, params):
            return super().apply(batch_id, updates, params).applied  # a bool

    rec = Recorder(Legacy(), Ledger(":memory:"), Catalog([SPEC]))
    out = rec.record("b", [call("d1"), call("d2")])
    assert out.applied == 2 and rec.ledger.count() == 2
    assert rec.ledger.get("d1")["clock"] is None  # unknown, not invented
