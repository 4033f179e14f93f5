from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

from tally_core import MemoryStore, StoreError, Tally
from tally_core.home import StoreDir
from tally_core.telemetry import TelemetryQueue

POOL = ["gpt-4o-mini", "gpt-4o"]


class FlakyStore(MemoryStore):
    """A store that is down until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.attempts = 0

    def apply(self, batch_id, updates, params):
        self.attempts += 1
        if self.down:
            raise StoreError("store unreachable")
        return super().apply(batch_id, updates, params)


def test_telemetry_returns_at_once_while_the_store_is_down(tmp_path) -> None:
    store = FlakyStore()
    with Tally(POOL, fallback="gpt-4o", store=store, ledger=str(tmp_path / "l.db")) as t:
        t._queue.retry_base_s = 0.01
        d = t.route(task_type="qa")
        for _ in range(100):
            t.telemetry(d, quality=0.9)
        assert not t.flush(0.3)  # cannot apply yet
        assert store.attempts >= 1
        assert t.telemetry_counts["retried"] >= 1
        store.down = False
        assert t.flush(10)
        assert sum(s["calls"] for s in t.stats("qa-simple")) == 100
        assert t.ledger.count() == 100


def test_batches_are_spooled_and_replayed_after_a_crash(tmp_path) -> None:
    # A process sends telemetry while its store is down, then dies without
    # closing. The next process on the same directory applies every event once.
    store_dir = tmp_path / "store"
    script = textwrap.dedent(f"""
        import os, time
        from tally_core import Tally, StoreError
        from tally_core.stores.disk import DiskStore
        class Down(DiskStore):
            def apply(self, *a, **k):
                raise StoreError("down")
        t = Tally({POOL!r}, fallback="gpt-4o", store=Down({str(store_dir)!r}))
        d = t.route(task_type="qa")
        for _ in range(300):
            t.telemetry(d, quality=0.8, input_tokens=10, output_tokens=5)
        deadline = time.time() + 10
        while not t.telemetry_counts["retried"] and time.time() < deadline:
            time.sleep(0.01)
        spooled = len(list(os.scandir({str(StoreDir(store_dir).spool)!r})))
        print(spooled, flush=True)
        os._exit(9)   # die: no close(), no atexit
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 9, out.stderr
    assert int(out.stdout.strip()) >= 1
    with Tally(POOL, fallback="gpt-4o", store=str(store_dir)) as t:
        assert t.flush(10)
        assert sum(s["calls"] for s in t.stats("qa-simple")) == 300
        assert t.ledger.count() == 300
        assert not list(StoreDir(store_dir).spool.glob("*.jsonl"))
    # And once only: a third process finds nothing more to replay.
    with Tally(POOL, fallback="gpt-4o", store=str(store_dir)) as t:
        assert sum(s["calls"] for s in t.stats("qa-simple")) == 300


def test_close_spools_what_it_cannot_apply(tmp_path) -> None:
    store = FlakyStore()
    t = Tally(POOL, fallback="gpt-4o", store=store, ledger=":memory:")
    t._queue._spool = tmp_path  # give the in-memory setup a spool to test
    d = t.route(task_type="qa")
    for _ in range(10):
        t.telemetry(d, quality=0.5)
    t.close(timeout=0.3)
    lines = [json.loads(x) for p in tmp_path.glob("*.jsonl") for x in p.read_text().splitlines()]
    events = [ev for ev in lines if not (isinstance(ev, dict) and "tally_spool" in ev)]
    assert len(events) == 10
    assert all(ev[0] == "call" for ev in events)
    assert all("prompt" not in json.dumps(ev) for ev in lines)


def test_queue_never_blocks_and_counts_drops_without_a_spool() -> None:
    release = threading.Event()

    def slow(batch_id, events):
        release.wait(5)

    q = TelemetryQueue(slow, max_queue=10, batch_size=5)
    start = time.perf_counter()
    for i in range(100):
        q.put({"i": i})
    assert time.perf_counter() - start < 1.0
    assert q.dropped.get("queue_full", 0) > 0
    release.set()
    q.shutdown(2)
    q.put({"late": True})
    assert q.dropped["already_shutdown"] == 1


def test_processing_errors_never_reach_the_caller() -> None:
    def boom(batch_id, events):
        raise RuntimeError("bug in the worker")

    q = TelemetryQueue(boom, background=False)
    q.put({"x": 1})  # does not raise
    assert q.counts["retried"] >= 1 and q.last_error and "bug in the worker" in q.last_error
