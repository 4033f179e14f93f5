"""The telemetry pipeline: enqueue on the caller's thread, apply in batches on a
worker, retry with backoff, spool to disk so nothing is lost.

Shaped like OpenTelemetry's ``BatchProcessor``: a bounded ``deque``, a daemon
worker woken by an ``Event`` or a timer, ``put`` never blocks, ``flush`` and an
idempotent ``shutdown``, the worker restarted after ``fork``. Where OTel drops
a span, we spool: each batch is written to a spool file before it is applied
and removed once the store and the ledger have it, so a crash or a store
outage leaves it on disk, and the next worker (this process or any other on
the same store) replays it. Replays are idempotent: the store remembers batch
ids and the ledger event ids.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TelemetryQueue"]

log = logging.getLogger("tally.telemetry")

Process = Callable[[str, list[dict[str, Any]]], None]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TelemetryQueue:
    """A non-blocking, batching, retrying, spooling event queue.

    Parameters
    ----------
    process
        ``process(batch_id, events)`` applies one batch; it may raise, and the
        batch is then retried (same id) with exponential backoff.
    spool_dir
        Directory for spool files; ``None`` keeps unapplied batches in memory
        only (the in-memory store has nothing to survive a crash for anyway).
    max_queue
        Events held in memory before ``put`` spools on the caller's thread.
    background
        False applies every event at once on the caller's thread (for
        simulations and tests that need reproducible, immediate learning).
    """

    def __init__(
        self,
        process: Process,
        *,
        spool_dir: str | None = None,
        max_queue: int = 100_000,
        batch_size: int = 512,
        interval_s: float = 0.05,
        retry_base_s: float = 0.05,
        retry_max_s: float = 30.0,
        background: bool = True,
    ) -> None:
        self._process = process
        self._spool = Path(spool_dir) if spool_dir else None
        if self._spool is not None:
            self._spool.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.background = background
        self.counts = {"enqueued": 0, "applied": 0, "retried": 0, "spooled": 0, "replayed": 0}
        self.dropped: dict[str, int] = {}
        self._init_runtime()
        self._shutdown = False
        self._sync_lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    def _init_runtime(self) -> None:
        self._queue: deque[dict[str, Any]] = deque()  # deque appends are thread safe
        self._failed: deque[tuple[str, list[dict[str, Any]], Path | None]] = deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._applied_seq = 0
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._retry_at = 0.0
        self._inflight = 0
        self._retry_delay = self.retry_base_s
        self.last_error: str | None = None

    def _after_fork(self) -> None:
        # The child inherits the deque but not the worker thread: the events
        # belong to the parent, which will apply them.
        self._init_runtime()

    # -- caller side ---------------------------------------------------------

    def put(self, event: dict[str, Any]) -> None:
        """Hand one event over. Never blocks on the store; never raises."""
        if self._shutdown:
            self._drop("already_shutdown", [event])
            return
        self.counts["enqueued"] += 1
        if not self.background:
            with self._sync_lock:
                self._run_batch(uuid.uuid4().hex, [event], None)
                self._retry_failed(force=True)
            return
        if len(self._queue) >= self.max_queue:
            # Spool where OTel would drop: slow, but only when the worker
            # cannot keep up, and nothing is lost.
            if not self._spool_write(uuid.uuid4().hex, [event]):
                self._drop("queue_full", [event])
            return
        self._queue.append(event)
        if self._worker is None:
            self._start()
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is applied. False on timeout."""
        target = self.counts["enqueued"]
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.background:
            with self._sync_lock:
                self._retry_failed(force=True)
            return not self._failed
        if self._worker is None and self._queue:
            self._start()
        with self._done:
            while self._applied_seq < target:
                if self._worker is None or not self._worker.is_alive():
                    return False
                self._wake.set()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(0.05 if left is None else min(left, 0.05))
        return True

    def shutdown(self, timeout: float = 5.0) -> None:
        """Apply what is queued (up to ``timeout``), spool the rest. Idempotent."""
        if self._shutdown:
            return
        self.flush(timeout)
        self._shutdown = True
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=max(timeout, 0.1))
        # Whatever is left goes to the spool for the next process.
        left = list(self._queue)
        self._queue.clear()
        if left and not self._spool_write(uuid.uuid4().hex, left):
            self._drop("shutdown_unflushed", left)
        while self._failed:
            batch_id, events, path = self._failed.popleft()
            if path is None and not self._spool_write(batch_id, events):
                self._drop("shutdown_unflushed", events)

    @property
    def pending(self) -> int:
        """Events not yet applied (queued or waiting for a retry)."""
        return len(self._queue) + self._inflight + sum(len(e) for _, e, _ in self._failed)

    # -- worker side ---------------------------------------------------------

    def _start(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                # Published only once running: flush() and shutdown() read
                # ``_worker`` without the lock and must never see it unstarted.
                worker = threading.Thread(target=self._run, name="tally-telemetry", daemon=True)
                worker.start()
                self._worker = worker

    def _run(self) -> None:
        self.replay_spool()
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._retry_failed()
            while self._queue:
                batch: list[dict[str, Any]] = []
                while self._queue and len(batch) < self.batch_size:
                    batch.append(self._queue.popleft())
                self._inflight = len(batch)
                batch_id = uuid.uuid4().hex
                try:
                    path = self._spool_write(batch_id, batch, keep_path=True)
                    self._run_batch(batch_id, batch, path)
                except Exception:  # never let the worker die with events in hand
                    log.exception("tally telemetry worker error")
                    self._failed.append((batch_id, batch, None))
                finally:
                    self._inflight = 0
            if self._shutdown and not self._queue:
                return

    def _run_batch(self, batch_id: str, events: list[dict[str, Any]], path: Path | None) -> None:
        try:
            self._process(batch_id, events)
        except Exception as exc:  # the store or ledger is down: keep, retry later
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("tally telemetry batch failed, will retry: %s", self.last_error)
            self.counts["retried"] += 1
            self._failed.append((batch_id, events, path))
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.retry_max_s)
            return
        self._retry_delay = self.retry_base_s
        if path is not None:
            path.unlink(missing_ok=True)
        self._mark_applied(len(events))

    def _mark_applied(self, n: int) -> None:
        with self._done:
            self._applied_seq += n
            self.counts["applied"] += n
            self._done.notify_all()

    def _retry_failed(self, force: bool = False) -> None:
        if not self._failed or (not force and time.monotonic() < self._retry_at):
            return
        for _ in range(len(self._failed)):
            batch_id, events, path = self._failed.popleft()
            before = len(self._failed)
            self._run_batch(batch_id, events, path)
            if len(self._failed) > before:  # still failing: stop hammering the store
                if path is None:
                    # Keep a copy on disk from now on, in case the process dies.
                    new_path = self._spool_write(batch_id, events, keep_path=True)
                    if new_path is not None:
                        self._failed[-1] = (batch_id, events, new_path)
                return

    # -- spool ---------------------------------------------------------------

    def _spool_write(
        self, batch_id: str, events: list[dict[str, Any]], keep_path: bool = False
    ) -> Path | None:
        if self._spool is None:
            return None
        path = self._spool / f"{os.getpid()}-{batch_id}.jsonl"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                for ev in events:
                    fh.write(json.dumps(ev, separators=(",", ":")))
                    fh.write("\n")
            os.replace(tmp, path)  # a reader never sees half a batch
        except OSError as exc:
            log.warning("tally telemetry could not spool a batch: %s", exc)
            return None
        if not keep_path:
            self.counts["spooled"] += len(events)
        return path

    def replay_spool(self) -> int:
        """Apply batches spooled by this store's earlier (or dead) processes."""
        if self._spool is None:
            return 0
        n = 0
        for path in sorted(self._spool.glob("*.jsonl")):
            owner, _, batch_id = path.stem.partition("-")
            if not owner.isdigit() or (_pid_alive(int(owner)) and int(owner) != os.getpid()):
                continue
            if int(owner) == os.getpid() and any(p == path for _, _, p in self._failed):
                continue
            claimed = self._spool / f"{os.getpid()}-{batch_id}.jsonl"
            try:
                if claimed != path:
                    os.rename(path, claimed)  # atomic: one replayer wins
                lines = claimed.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            events = [json.loads(line) for line in lines if line.strip()]
            self.counts["enqueued"] += len(events)
            self.counts["replayed"] += len(events)
            self._run_batch(batch_id, events, claimed)
            n += len(events)
        return n

    def _drop(self, reason: str, events: list[dict[str, Any]]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + len(events)
        log.error("tally telemetry dropped %d event(s): %s", len(events), reason)
