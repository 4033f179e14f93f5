"""Chaos: real processes killed mid-stream, pre-fork servers, a real
redis-server killed and restarted under load.

The invariant everywhere: every event is recorded once or not at all, and
the ledger and the learned state agree (no outcome learned without its row,
no row without its outcome). Bounded to well under a minute here;
``TALLY_CHAOS_LONG=1`` repeats each scenario many more times.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tally_core import RedisStore, Tally
from tally_core.home import StoreDir

LONG = os.environ.get("TALLY_CHAOS_LONG") == "1"
POOL = ["gpt-4o-mini", "gpt-4o"]


def learned_calls(t: Tally) -> int:
    return int(
        sum(arm[11] for s in t.store.load().values() for arm in s["cells"]["*"].values())
    )


def learned_quality_obs(t: Tally) -> int:
    return int(
        sum(arm[18] for s in t.store.load().values() for arm in s["cells"]["*"].values())
    )


# -- SIGKILL mid-stream -----------------------------------------------------------

_STREAM = textwrap.dedent("""
    import sys
    from tally_core import Tally
    t = Tally({pool!r}, fallback="gpt-4o", store={store!r}, seed={seed})
    print("ready", flush=True)
    i = 0
    while True:
        d = t.route(task_type=("qa", "extraction")[i % 2])
        t.telemetry(d, quality=0.8, input_tokens=100, output_tokens=20)
        if i % 3 == 0:
            t.feedback(d, quality=0.4)
        i += 1
""")


@pytest.mark.parametrize("round_", range(12 if LONG else 3))
def test_sigkill_mid_stream_loses_nothing_it_recorded_and_doubles_nothing(tmp_path, round_):
    store = str(tmp_path / "s")
    rng = random.Random(round_)
    for life in range(2):  # killed twice on the same store
        proc = subprocess.Popen(
            [sys.executable, "-c", _STREAM.format(pool=POOL, store=store, seed=life)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with Tally(POOL, fallback="gpt-4o", store=store) as t:
        assert t.flush(30)
        rows = t.ledger.count()
        assert rows > 0
        # Recorded once or not at all, in the state and the ledger alike.
        assert learned_calls(t) == rows
        ids = [r[0] for r in t.ledger.select(["decision_id"])]
        assert len(ids) == len(set(ids))
        spool = StoreDir(store).spool
        assert not list(spool.glob("*.jsonl")) and not list(spool.glob("*.tmp"))
        assert t.telemetry_counts["quarantined"] == 0


# -- pre-fork server ----------------------------------------------------------------


def _serve(t: Tally, worker: int, n: int) -> None:
    for i in range(n):
        d = t.route(task_type="qa", org=f"org-{worker % 2}")
        t.telemetry(d, quality=0.9, input_tokens=50, output_tokens=10)
        if i % 2 == 0:
            t.feedback(d, quality=0.3)
    t.close()


def _prefork(t: Tally, workers: int, n: int) -> None:
    pids = []
    for w in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker process, as gunicorn forks them
            code = 0
            try:
                _serve(t, w, n)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_pre_fork_server_records_every_call_of_every_worker(tmp_path) -> None:
    t = Tally(POOL, fallback="gpt-4o", store=str(tmp_path / "s"), seed=1)
    t.telemetry(t.route(task_type="qa"), quality=0.9)
    assert t.flush(10)  # the parent's worker thread is running when it forks
    workers, n = (8, 1000) if LONG else (4, 300)
    _prefork(t, workers, n)
    assert t.flush(10)
    t.refresh()
    total = workers * n + 1
    assert t.ledger.count() == total
    assert learned_calls(t) == total
    ids = [r[0] for r in t.ledger.select(["decision_id"])]
    assert len(set(ids)) == total
    with_feedback = sum(1 for r in t.ledger.select(["feedback_ts"]) if r[0] is not None)
    assert with_feedback == workers * n // 2
    t.close()


# -- a real redis-server, killed and restarted under load ------------------------------


class PersistentRedis:
    """redis-server with an fsync-always append-only file, so a SIGKILL loses
    nothing it acknowledged."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def persistent_redis(tmp_path):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: .ci/run installs it")
        pytest.skip("redis-server is not installed")
    (tmp_path / "redis").mkdir()
    server = PersistentRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.mark.redis
def test_redis_killed_and_restarted_under_load_loses_and_doubles_nothing(
    tmp_path, persistent_redis
) -> None:
    prefix = f"chaos-{uuid.uuid4().hex}"
    store = RedisStore(persistent_redis.url, prefix=prefix, directory=tmp_path / "home",
                       socket_timeout_s=0.3)
    t = Tally(POOL, fallback="gpt-4o", store=store, seed=7)
    t._queue.retry_max_s = 0.2
    n = 6000 if LONG else 2000
    done = threading.Event()

    def stream() -> None:
        for i in range(n):
            d = t.route(task_type="qa")
            t.telemetry(d, quality=0.7)
            if i % 4 == 0:
                t.feedback(d, quality=0.1)
            if i % 50 == 0:
                time.sleep(0.01)
        done.set()

    th = threading.Thread(target=stream)
    th.start()
    rng = random.Random(11)
    outages = 0
    while not done.is_set() and outages < (8 if LONG else 3):
        time.sleep(rng.uniform(0.05, 0.2))
        persistent_redis.kill()
        time.sleep(rng.uniform(0.1, 0.4))
        persistent_redis.start()
        outages += 1
    th.join(60)
    assert t.flush(60), t.telemetry_counts
    assert outages >= 1
    assert t.telemetry_counts["retried"] >= 1  # the outages hit the stream
    assert t.ledger.count() == n
    with RedisStore(persistent_redis.url, prefix=prefix) as fresh:
        states = fresh.load()
    calls = sum(arm[11] for s in states.values() for arm in s["cells"]["*"].values())
    assert calls == n
    with_feedback = sum(1 for r in t.ledger.select(["feedback_ts"]) if r[0] is not None)
    assert with_feedback == len(range(0, n, 4))
    t.close()


@pytest.mark.redis
def test_a_pre_fork_server_on_redis(tmp_path, persistent_redis) -> None:
    prefix = f"fork-{uuid.uuid4().hex}"
    t = Tally(POOL, fallback="gpt-4o", seed=2,
              store=RedisStore(persistent_redis.url, prefix=prefix, directory=tmp_path / "h"))
    t.telemetry(t.route(task_type="qa"), quality=0.9)
    assert t.flush(10)
    _prefork(t, 3, 200)
    t.refresh()
    assert learned_calls(t) == 601
    assert t.ledger.count() == 601  # one ledger file per machine, shared by the workers
    t.close()


# -- killed while overflowing during an outage -----------------------------------------

_OVERFLOW = textwrap.dedent("""
    import os
    from tally_core import Tally, StoreError
    from tally_core.stores.disk import DiskStore
    class Down(DiskStore):
        def apply(self, *a, **k):
            raise StoreError("down")
    t = Tally({pool!r}, fallback="gpt-4o", store=Down({store!r}), max_queue=200)
    for i in range(5000):
        t.telemetry(t.route(task_type="qa"), quality=0.6)
    import time
    deadline = time.time() + 20
    while t.telemetry_counts["spooled"] < 4000 and time.time() < deadline:
        time.sleep(0.01)
    print(t.telemetry_counts["spooled"], flush=True)
    os.kill(os.getpid(), 9)
""")


def test_killed_while_overflowing_in_an_outage_keeps_what_it_spooled(tmp_path) -> None:
    store = str(tmp_path / "s")
    out = subprocess.run(
        [sys.executable, "-c", _OVERFLOW.format(pool=POOL, store=store)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == -9, out.stderr
    spooled = int(out.stdout.strip())
    assert spooled >= 4000
    with Tally(POOL, fallback="gpt-4o", store=store) as t:
        assert t.flush(30)
        assert t.ledger.count() == learned_calls(t)
        assert t.ledger.count() >= spooled
