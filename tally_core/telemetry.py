"""The telemetry queue: enqueue on the caller's thread, hand batches to the
recorder on a worker, retry in order, spool to disk so nothing is lost.

Shaped like OpenTelemetry's ``BatchProcessor``: a bounded ``deque``, a daemon
worker woken by an ``Event`` or a timer, ``put`` never blocks on the store,
``flush`` and an idempotent ``shutdown``, a fresh runtime after ``fork``. It
hands each batch to an exporter (``Recorder.record``) and never looks inside
an event.

Where OTel drops, we spool:

- each batch is written to a spool file before it is handed over and
  removed once it is recorded, so a crash mid-batch leaves it on disk and the
  next worker on the same store replays it (replays are idempotent: the store
  remembers batch ids, the ledger event ids);
- a batch the store refuses (an outage) is kept, fsynced to the spool, and
  retried with backoff; nothing behind it is applied until it is, so events
  stay in order (feedback never overtakes its own call);
- when the queue is full, events go to fsynced spool files in order, and the
  worker replays those while it runs, as soon as it has caught up;
- a spool file that cannot be read (garbage, truncated, the wrong shape) is
  moved to ``spool/quarantine/`` with an error naming it, never retried and
  never in the way of start-up; stale ``.tmp`` files are removed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from tally_core._brief import cut
from tally_core.errors import InvalidFieldError
from tally_core.events import (
    FIELDS,
    CallEvent,
    FeedbackEvent,
    RolloutEvent,
    from_record,
    new_id,
    to_row,
)

__all__ = ["Exporter", "TelemetryQueue"]

log = logging.getLogger("tally.telemetry")

#: A spool file untouched this long is replayed even if its owner's pid is
#: alive (pids are reused; replays are idempotent, so a wrong guess is safe).
ORPHAN_AGE_S = 3600.0

# Spool files some live queue of this process holds (queued for a retry, an
# overflow not yet replayed): a file of this pid not in here was left by a
# queue that is gone (closed), and is anyone's to replay.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


class Exporter(Protocol):
    """Where the queue hands batches: ``Recorder`` is one."""

    def record(self, batch_id: str, events: Sequence[Any]) -> Any:
        """Record a batch; raise to have it kept and retried. May return an
        object with ``rejected`` (events it refused on their own)."""

    def reject(self, rejected: Sequence[tuple[Any, BaseException]]) -> None:
        """Note events that can never be recorded."""


class _FunctionExporter:
    def __init__(self, fn: Callable[[str, list[Any]], Any]) -> None:
        self._fn = fn

    def record(self, batch_id: str, events: Sequence[Any]) -> Any:
        return self._fn(batch_id, list(events))

    def reject(self, rejected: Sequence[tuple[Any, BaseException]]) -> None:
        pass


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


# A spool file: a header naming each kind's fields, then one event a line,
# as ``[kind, *values]`` (or a keyed record, for events that are plain dicts).
_HEADER = json.dumps({"tally_spool": 2, "fields": FIELDS}, separators=(",", ":"))
_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _encode(event: Any) -> str:
    if isinstance(event, (CallEvent, FeedbackEvent, RolloutEvent)):
        return _JSON.encode(to_row(event))
    return _JSON.encode(dict(event))


def _decode(line: Any, names: dict[str, Any] | None) -> Any:
    if isinstance(line, list):
        kind = line[0] if line else None
        fields = names.get(kind) if names is not None and isinstance(kind, str) else None
        if not isinstance(fields, list) or len(fields) != len(line) - 1:
            raise InvalidFieldError("event", "a row that matches no field list in the header")
        return from_record({"kind": kind, **dict(zip(fields, line[1:], strict=True))})
    return from_record(line)


class _Batch:
    __slots__ = ("batch_id", "durable", "events", "path")

    def __init__(self, batch_id: str, events: list[Any], path: Path | None) -> None:
        self.batch_id = batch_id
        self.events = events
        self.path = path
        self.durable = False


class TelemetryQueue:
    """A non-blocking, batching, in-order retrying, spooling event queue.

    Parameters
    ----------
    exporter
        Takes each batch: an ``Exporter`` (``Recorder``) or a function
        ``fn(batch_id, events)``. If it raises, the batch is kept and retried
        (same id) with exponential backoff, before anything queued after it.
    spool_dir
        Directory for spool files; ``None`` keeps unapplied batches in memory
        only (the in-memory store has nothing to survive a crash for anyway).
    max_queue
        Events held in memory; beyond it, events are spooled (or dropped,
        counted, without a spool).
    background
        False applies every event at once on the caller's thread (for
        simulations and tests that need reproducible, immediate learning).
    fsync
        Sync spool files that hold the only copy of events (an outage's
        batches, overflow, shutdown) to disk before counting them spooled.
    """

    def __init__(
        self,
        exporter: Exporter | Callable[[str, list[Any]], Any],
        *,
        spool_dir: str | None = None,
        max_queue: int = 100_000,
        batch_size: int = 1024,
        interval_s: float = 0.05,
        retry_base_s: float = 0.05,
        retry_max_s: float = 30.0,
        scan_interval_s: float = 5.0,
        background: bool = True,
        fsync: bool = True,
    ) -> None:
        self._exporter: Exporter
        if hasattr(exporter, "record"):
            self._exporter = exporter  # type: ignore[assignment]
        else:
            self._exporter = _FunctionExporter(exporter)
        self._spool = Path(spool_dir) if spool_dir else None
        if self._spool is not None:
            self._spool.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.scan_interval_s = scan_interval_s
        self.background = background
        self.fsync = fsync
        self._init_runtime()
        self._shutdown = False
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    def _init_runtime(self) -> None:
        self.counts = {
            "enqueued": 0,
            "applied": 0,
            "rejected": 0,
            "retried": 0,
            "spooled": 0,
            "replayed": 0,
            "quarantined": 0,
        }
        self.dropped: dict[str, int] = {}
        self._queue: deque[Any] = deque()  # deque appends are thread safe
        self._failed: deque[_Batch] = deque()
        # Overflow: events beyond max_queue, in order: files, then a buffer.
        self._overflow_lock = threading.Lock()
        self._overflowing = False
        self._overflow_buf: list[Any] = []
        self._overflow_files: deque[Path] = deque()
        self._held: set[str] = set()  # spool files this queue holds right now
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._done_seq = 0
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._sync_lock = threading.RLock()
        self._retry_at = 0.0
        self._inflight = 0
        self._retry_delay = self.retry_base_s
        self._seq = 0
        self._outage_logged = False
        self.last_error: str | None = None

    def _after_fork(self) -> None:
        # The child inherits the parent's events but not its worker: they
        # belong to the parent, which will apply them. The child starts
        # clean (own counts, own locks, own worker on its first event).
        global _HELD_LOCK
        _HELD_LOCK = threading.Lock()
        _HELD.clear()
        self._init_runtime()

    # -- caller side ---------------------------------------------------------

    def put(self, event: Any) -> None:
        """Hand one event over. Never blocks on the store; never raises."""
        if self._shutdown:
            self._drop("already_shutdown", [event])
            return
        self.counts["enqueued"] += 1
        if not self.background:
            with self._sync_lock:
                self._failed.append(_Batch(new_id(), [event], None))
                self._retry_failed(force=True)
            return
        if self._overflowing or len(self._queue) >= self.max_queue:
            self._overflow(event)
        else:
            self._queue.append(event)
            if len(self._queue) >= self.batch_size:
                self._wake.set()
        if self._worker is None:
            self._start()

    def _overflow(self, event: Any) -> None:
        if self._spool is None:
            self._drop("queue_full", [event])
            return
        with self._overflow_lock:
            if not self._overflowing and len(self._queue) < self.max_queue:
                self._queue.append(event)  # the worker caught up meanwhile
                return
            self._overflowing = True
            self._overflow_buf.append(event)
            if len(self._overflow_buf) < self.batch_size:
                return
            events, self._overflow_buf = self._overflow_buf, []
            path = self._spool_write(new_id(), events, durable=True)
            if path is None:
                self._drop("queue_full", events)
                return
            self.counts["spooled"] += len(events)
            self._overflow_files.append(path)
        self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is recorded (or rejected),
        including events that overflowed to the spool. False on timeout."""
        target = self.counts["enqueued"]
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.background:
            with self._sync_lock:
                self._retry_failed(force=True)
            return not self._failed
        if self._worker is None and (self._queue or self._overflowing or self._failed):
            self._start()
        with self._done:
            while self._done_seq < target:
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
        # Whatever is left goes to the spool for the next process, in order.
        with self._sync_lock:
            while self._failed:
                b = self._failed.popleft()
                if b.path is None:
                    self._keep(b.events)
                else:
                    self._release(b.path.name)
        left = list(self._queue)
        self._queue.clear()
        with self._overflow_lock:
            left += self._overflow_buf
            self._overflow_buf = []
        self._keep(left)
        # What this queue leaves on disk is the next queue's (or process's).
        for name in list(self._held):
            self._release(name)

    def _keep(self, events: list[Any]) -> None:
        if not events:
            return
        if self._spool_write(new_id(), events, durable=True) is None:
            self._drop("shutdown_unflushed", events)
        else:
            self.counts["spooled"] += len(events)

    @property
    def pending(self) -> int:
        """Events not yet recorded (queued, overflowed, or waiting for a retry)."""
        return self.counts["enqueued"] - self._done_seq

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
        last_scan = time.monotonic()
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self._step()
                if time.monotonic() - last_scan > self.scan_interval_s:
                    last_scan = time.monotonic()
                    if not self._failed:
                        self.replay_spool()
            except Exception:  # never let the worker die with events in hand
                log.exception("tally telemetry worker error")
            if self._shutdown and not self._queue:
                return

    def _step(self) -> None:
        """One round: retries first, then the queue, then overflow files,
        stopping at the first batch that fails (order is kept)."""
        with self._sync_lock:
            if not self._retry_failed():
                self._spool_queue()
                return
            while self._queue:
                batch: list[Any] = []
                while self._queue and len(batch) < self.batch_size:
                    batch.append(self._queue.popleft())
                self._inflight = len(batch)
                batch_id = new_id()
                path = self._spool_write(batch_id, batch, durable=False)
                ok = self._deliver(_Batch(batch_id, batch, path))
                self._inflight = 0
                if not ok:
                    self._spool_queue()
                    return
            self._drain_overflow()

    def _spool_queue(self) -> None:
        """During an outage, move what waits in memory to the spool, in
        order, and spool new events from now on until the worker catches up:
        a long outage then costs disk, not memory, and survives a crash."""
        if self._spool is None or not self._queue:
            return
        with self._overflow_lock:
            while self._queue:
                events: list[Any] = []
                while self._queue and len(events) < self.batch_size:
                    events.append(self._queue.popleft())
                path = self._spool_write(new_id(), events, durable=True)
                if path is None:  # the disk is no help: keep them in memory
                    self._queue.extendleft(reversed(events))
                    return
                self.counts["spooled"] += len(events)
                self._overflow_files.append(path)
            self._overflowing = True

    def _drain_overflow(self) -> None:
        while self._overflow_files:
            path = self._overflow_files[0]
            events = self._read_spool(path)
            self._overflow_files.popleft()
            if events is None:
                continue
            if not self._deliver(_Batch(_batch_id(path), events, path)):
                return
        with self._overflow_lock:
            if self._overflowing and not self._overflow_files and not self._queue:
                # Caught up: the buffered tail goes back to the queue, ahead
                # of anything put from now on.
                self._queue.extend(self._overflow_buf)
                self._overflow_buf = []
                self._overflowing = False
        if self._queue:
            self._wake.set()

    def _deliver(self, batch: _Batch) -> bool:
        """Hand a batch to the exporter. True when done with it; False when
        it was kept for a retry (put at the front of ``_failed``)."""
        try:
            result = self._exporter.record(batch.batch_id, batch.events)
        except Exception as exc:  # the store or ledger is down: keep, retry later
            self.last_error = f"{type(exc).__name__}: {cut(str(exc), 300)}"
            if not self._outage_logged:
                self._outage_logged = True
                log.warning("tally telemetry batch failed, will retry: %s", self.last_error)
            else:
                log.debug("tally telemetry batch failed again: %s", self.last_error)
            if batch.path is None:
                batch.path = self._spool_write(batch.batch_id, batch.events, durable=True)
                batch.durable = True
            elif self.fsync and not batch.durable:
                # The write-ahead copy is now the one that must outlive a
                # crash of the machine: make it durable, once.
                _fsync_file(batch.path)
                _fsync_dir(batch.path.parent)
                batch.durable = True
            if batch.path is not None:
                self._hold(batch.path.name)
            self.counts["retried"] += 1
            self._failed.appendleft(batch)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.retry_max_s)
            return False
        if self._outage_logged:
            self._outage_logged = False
            log.warning("tally telemetry recovered: %s", self.last_error)
        self._retry_delay = self.retry_base_s
        if batch.path is not None:
            batch.path.unlink(missing_ok=True)
            self._release(batch.path.name)
        rejected = getattr(result, "rejected", 0)
        rejected = rejected if isinstance(rejected, int) and 0 <= rejected else 0
        self._mark_done(len(batch.events) - rejected, rejected)
        return True

    def _mark_done(self, applied: int, rejected: int) -> None:
        with self._done:
            self._done_seq += applied + rejected
            self.counts["applied"] += applied
            self.counts["rejected"] += rejected
            self._done.notify_all()

    def _retry_failed(self, force: bool = False) -> bool:
        """Retry kept batches in order; True once none is left."""
        if not self._failed:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        while self._failed:
            batch = self._failed.popleft()
            if not self._deliver(batch):
                return False
        return True

    # -- spool ---------------------------------------------------------------

    def _spool_write(self, batch_id: str, events: list[Any], *, durable: bool) -> Path | None:
        if self._spool is None:
            return None
        self._seq += 1
        # pid, then a per-process sequence: one process's files sort in order.
        name = f"{os.getpid()}-{time.time_ns():020d}{self._seq:08d}-{batch_id}"
        path = self._spool / f"{name}.jsonl"
        tmp = self._spool / f"{name}.tmp"
        # Held before it appears, so no other queue of this process takes it.
        self._hold(path.name)
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(_HEADER + "\n" + "\n".join(_encode(e) for e in events) + "\n")
                if durable and self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)  # a reader never sees half a batch
            if durable and self.fsync:
                _fsync_dir(self._spool)
        except (OSError, TypeError, ValueError) as exc:
            self._release(path.name)
            log.warning("tally telemetry could not spool a batch to %s: %s", path, exc)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        return path

    def _read_spool(self, path: Path) -> list[Any] | None:
        """The events in a spool file, or None after quarantining a bad one."""
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            log.warning("tally telemetry could not read spool file %s: %s", path, exc)
            return None
        except UnicodeDecodeError as exc:
            self._quarantine(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            return None
        events: list[Any] = []
        names: dict[str, Any] | None = None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if n == 1 and isinstance(value, dict) and "tally_spool" in value:
                    names = value.get("fields")
                    if not isinstance(names, dict):
                        raise InvalidFieldError("fields", "the header names no fields")
                    continue
                events.append(_decode(value, names))
            except ValueError as exc:  # JSONDecodeError and InvalidFieldError are ValueErrors
                what = str(exc) if isinstance(exc, InvalidFieldError) else f"not JSON: {exc}"
                self._quarantine(path, f"line {n}: {cut(what, 200)}")
                return None
            except RecursionError:
                self._quarantine(path, f"line {n}: nested too deep")
                return None
        if not text.endswith("\n") and text:
            self._quarantine(path, "truncated (no final newline)")
            return None
        return events

    def _quarantine(self, path: Path, reason: str) -> None:
        assert self._spool is not None
        where = self._spool / "quarantine"
        try:
            where.mkdir(exist_ok=True)
            os.replace(path, where / path.name)
            moved = f"moved to {where / path.name}"
        except OSError as exc:
            moved = f"could not move it aside ({exc}); delete it"
        self._release(path.name)
        self.counts["quarantined"] += 1
        log.error("tally telemetry spool file %s is unreadable: %s; %s", path, reason, moved)

    def replay_spool(self) -> int:
        """Apply batches spooled by this store's dead (or earlier) processes;
        quarantine unreadable files; remove stale ``.tmp`` files. Never raises;
        stops at the first batch the store refuses (it is kept and retried)."""
        if self._spool is None:
            return 0
        n = 0
        try:
            paths = sorted(self._spool.glob("*.jsonl"), key=_spool_order)
            self._clean_tmp()
        except OSError as exc:
            log.warning("tally telemetry cannot read its spool %s: %s", self._spool, exc)
            return 0
        with self._sync_lock:
            for path in paths:
                if not self._orphan(path):
                    continue
                claimed = self._spool / f"{os.getpid()}-{path.name.partition('-')[2]}"
                try:
                    if claimed != path:
                        os.rename(path, claimed)  # atomic: one replayer wins
                except OSError:
                    continue
                self._hold(claimed.name)
                events = self._read_spool(claimed)
                if events is None:
                    continue
                self.counts["enqueued"] += len(events)
                self.counts["replayed"] += len(events)
                n += len(events)
                batch = _Batch(_batch_id(claimed), events, claimed)
                if self._failed:
                    self._failed.append(batch)  # in line behind what already waits
                elif not self._deliver(batch):
                    if self.background:
                        self._start()
                    break
        return n

    def _hold(self, name: str) -> None:
        self._held.add(name)
        with _HELD_LOCK:
            _HELD.add(name)

    def _release(self, name: str) -> None:
        self._held.discard(name)
        with _HELD_LOCK:
            _HELD.discard(name)

    def _orphan(self, path: Path) -> bool:
        owner = path.name.partition("-")[0]
        if not owner.isdigit():
            return True  # not named by any Tally process: nobody else will take it
        if int(owner) == os.getpid():
            with _HELD_LOCK:
                return path.name not in _HELD
        if not _pid_alive(int(owner)):
            return True
        try:
            return path.stat().st_mtime < time.time() - ORPHAN_AGE_S
        except OSError:
            return False

    def _clean_tmp(self) -> None:
        assert self._spool is not None
        for tmp in self._spool.glob("*.tmp"):
            owner = tmp.name.partition("-")[0]
            try:
                stale = tmp.stat().st_mtime < time.time() - ORPHAN_AGE_S
                if stale or not owner.isdigit() or not _pid_alive(int(owner)):
                    tmp.unlink(missing_ok=True)
            except (OSError, ValueError):
                continue

    def _drop(self, reason: str, events: list[Any]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + len(events)
        log.error("tally telemetry dropped %d event(s): %s", len(events), reason)


def _batch_id(path: Path) -> str:
    return path.stem.rpartition("-")[2]


def _spool_order(path: Path) -> tuple[float, str]:
    try:
        return (path.stat().st_mtime, path.name)
    except OSError:
        return (0.0, path.name)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
