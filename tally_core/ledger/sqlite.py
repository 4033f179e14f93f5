"""The ledger: every call Tally was told about, in SQLite (WAL).

One row per call: when, which decision, the envelope's shape, the model, the
phase, tokens, latency, the cost at the prices in force at call time, the
outcome and the quality (joined later by decision id when feedback arrives).
Never any prompt or completion text: the row has no column that could hold it.
"""

from __future__ import annotations

import bisect
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tally_core._brief import cut
from tally_core.errors import StoreError
from tally_core.ledger._rollouts import ROLLOUT_NAMES as _ROLLOUT_NAMES
from tally_core.ledger._rollouts import rollout_ddl, rollout_filters, rollout_values
from tally_core.ledger._rows import (
    COLUMNS,
    ENVELOPE_COLUMNS,
    NAMES,
    PriceRecord,
    decode_row,
    encode_row,
    encode_value,
    filters,
    same_price,
)

__all__ = ["COLUMNS", "ENVELOPE_COLUMNS", "Ledger", "PriceRecord"]

_MARKS = ", ".join("?" for _ in NAMES)
# Errors that belong to one row's values, not to the database.
_ROW_ERRORS = (
    OverflowError,
    TypeError,
    ValueError,
    sqlite3.InterfaceError,
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
)
_ABANDONED: list[sqlite3.Connection] = []  # inherited across fork: kept, never closed
log = logging.getLogger("tally.ledger")


class Ledger:
    """The call log. ``path=":memory:"`` keeps it in memory (tests, simulations).

    >>> led = Ledger(":memory:")
    >>> led.append([{"event_id": "e1", "decision_id": "d1", "ts": 1.0, "org": "default",
    ...              "task_type": "qa-simple", "model": "gpt-4o-mini", "success": 1,
    ...              "quality": 0.9, "slugs": ["incomplete"]}])
    1
    >>> row = led.get("d1"); row["model"], row["slugs"]
    ('gpt-4o-mini', ['incomplete'])
    """

    def __init__(
        self, path: str | os.PathLike[str] = ":memory:", *, readonly: bool = False
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        self._has_prices = True
        self._lock = threading.Lock()
        self._pid = os.getpid()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())
        if readonly:
            self._open_readonly()
            self._closed = False
            return
        try:
            if self.path != ":memory:":
                Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
                self.path = str(Path(self.path).expanduser())
            self._db = self._connect()
            cols = ", ".join(f"{c} {t}" for c, t in COLUMNS)
            self._db.execute(f"CREATE TABLE IF NOT EXISTS calls ({cols})")
            self._db.execute("CREATE INDEX IF NOT EXISTS calls_decision ON calls(decision_id)")
            self._db.execute("CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS prices (ts REAL, model TEXT, "
                "input_cost_per_mtok REAL, output_cost_per_mtok REAL, source TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS rejected (ts REAL, event_id TEXT, "
                "decision_id TEXT, field TEXT, reason TEXT)"
            )
            for stmt in rollout_ddl():  # migration: rollout transitions (additive)
                self._db.execute(stmt)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open ledger at {self.path}: {exc}") from exc
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
            return sqlite3.connect(
                uri, uri=True, check_same_thread=False, timeout=30.0, isolation_level=None
            )
        db = sqlite3.connect(
            self.path, check_same_thread=False, timeout=30.0, isolation_level=None
        )
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _after_fork(self) -> None:
        # The parent's lock may have been held by one of its threads.
        self._lock = threading.Lock()

    def _open_readonly(self) -> None:
        # Reports open an existing ledger without ever writing to it (and
        # without creating one where there was none).
        path = Path(self.path).expanduser()
        if self.path == ":memory:" or not path.is_file():
            raise StoreError(f"no ledger at {self.path}")
        self.path = str(path)
        try:
            self._db = self._connect()
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open ledger at {self.path}: {exc}") from exc
        if "calls" not in tables:
            self._db.close()
            raise StoreError(f"{self.path} is not a Tally ledger (no calls table)")
        self._has_prices = "prices" in tables

    def append(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows (a missing column is NULL); a known ``event_id`` is skipped.

        Returns how many rows were new. A row SQLite cannot hold (an integer
        beyond 64 bits, a value of the wrong type) is left out, logged, and
        never stops the others; ``write`` also says which rows those were.
        """
        new, rejected = self.write(rows)
        for i, reason in rejected:
            log.error("tally ledger left out row %d: %s", i, reason)
        return new

    def write(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[tuple[int, str]]]:
        """``append`` that returns (rows new, [(index, reason) of rows left out]).

        Either every storable row is committed or, if the database itself
        fails (locked, full, gone), none is and ``StoreError`` is raised: no
        transaction is ever left open.
        """
        if not rows:
            return 0, []
        sql = f"INSERT OR IGNORE INTO calls ({', '.join(NAMES)}) VALUES ({_MARKS})"
        rejected: list[tuple[int, str]] = []
        values: list[list[Any]] = []
        at: list[int] = []
        for i, r in enumerate(rows):
            try:
                values.append(encode_row(r))
                at.append(i)
            except (TypeError, ValueError) as exc:
                rejected.append((i, f"{type(exc).__name__}: {cut(str(exc))}"))
        with self._lock:
            self._check_pid()
            try:
                before = self._db.total_changes
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(sql, values)
                except _ROW_ERRORS:
                    # One row SQLite cannot hold: redo them one by one in the
                    # same transaction, leaving out only the bad ones.
                    self._db.execute("ROLLBACK")
                    before = self._db.total_changes
                    self._db.execute("BEGIN")
                    for i, v in zip(at, values, strict=True):
                        try:
                            self._db.execute(sql, v)
                        except _ROW_ERRORS as exc:
                            rejected.append((i, f"{type(exc).__name__}: {cut(str(exc))}"))
                self._db.execute("COMMIT")
                return self._db.total_changes - before, sorted(rejected)
            except BaseException as exc:
                # Whatever failed, close the transaction: an open one would
                # make every later write fail.
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"ledger write failed: {exc}") from exc
                raise

    def record_rejected(
        self, rows: Iterable[tuple[float | None, str | None, str | None, str, str]]
    ) -> None:
        """Remember events that were rejected: (ts, event_id, decision_id, field, reason)."""
        with self._lock:
            self._check_pid()
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO rejected VALUES (?, ?, ?, ?, ?)",
                    [(ts, e, d, f[:64], cut(r, 300)) for ts, e, d, f, r in rows],
                )
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"ledger write failed: {exc}") from exc
                raise

    def rejected(self) -> list[dict[str, Any]]:
        """Events rejected so far, oldest first."""
        with self._lock:
            self._check_pid()
            try:
                cur = self._db.execute(
                    "SELECT ts, event_id, decision_id, field, reason FROM rejected ORDER BY rowid"
                )
            except sqlite3.Error:  # a ledger from before the table existed
                return []
            return [
                dict(zip(("ts", "event_id", "decision_id", "field", "reason"), r, strict=True))
                for r in cur
            ]

    def record_rollouts(self, events: Iterable[Any]) -> None:
        """Write rollout transitions (``RolloutEvent`` s); one already here (by event id)
        is skipped."""
        values = rollout_values(events)
        if not values:
            return
        marks = ", ".join("?" for _ in _ROLLOUT_NAMES)
        with self._lock:
            self._check_pid()
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT OR IGNORE INTO rollouts ({', '.join(_ROLLOUT_NAMES)}) "
                    f"VALUES ({marks})", values)
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"ledger write failed: {exc}") from exc
                raise

    def rollouts(
        self, *, model: str | None = None, org: str | None = None,
        task_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rollout transitions (advanced, done, rolled-back), oldest first."""
        where, params = rollout_filters(model, org, task_type, "?")
        with self._lock:
            self._check_pid()
            try:
                cur = self._db.execute(
                    f"SELECT {', '.join(_ROLLOUT_NAMES)} FROM rollouts{where} "
                    "ORDER BY ts, rowid", params)
            except sqlite3.Error:  # a read-only ledger from before the table existed
                return []
            return [dict(zip(_ROLLOUT_NAMES, r, strict=True)) for r in cur]

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _check_pid(self) -> None:
        # A connection must never cross a fork (SQLite's rule): a child gets
        # its own, opened on first use. Lock held.
        if self._pid != os.getpid():
            _ABANDONED.append(self._db)  # never closed in the child: it is the parent's
            self._pid = os.getpid()
            if self.path != ":memory:":
                self._db = self._connect()

    def get(self, decision_id: str) -> dict[str, Any] | None:
        """The latest row for a decision, or None."""
        with self._lock:
            self._check_pid()
            cur = self._db.execute(
                f"SELECT {', '.join(NAMES)} FROM calls WHERE decision_id = ? "
                "ORDER BY ts DESC LIMIT 1",
                (decision_id,),
            )
            row = cur.fetchone()
        return None if row is None else decode_row(row)

    def set_feedback(
        self, decision_id: str, quality: float, slugs: Sequence[str] | None, ts: float
    ) -> None:
        """Record late quality for a decision's call."""
        with self._lock:
            self._check_pid()
            try:
                self._db.execute(
                    "UPDATE calls SET quality = ?, quality_applied = ?, "
                    "slugs = COALESCE(?, slugs), feedback_ts = ? "
                    "WHERE rowid = (SELECT rowid FROM calls WHERE decision_id = ? "
                    "ORDER BY ts DESC LIMIT 1)",
                    (quality, quality, encode_value("slugs", slugs), ts, decision_id),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"ledger write failed: {exc}") from exc

    def record_prices(self, rows: Iterable[tuple[float, str, float, float, str]]) -> None:
        """Remember a price change (ts, model, input, output, source)."""
        with self._lock:
            self._check_pid()
            self._db.executemany("INSERT INTO prices VALUES (?, ?, ?, ?, ?)", list(rows))

    def sync_prices(
        self,
        prices: Iterable[tuple[str, float | None, float | None, str]],
        *,
        ts: float | None = None,
    ) -> list[PriceRecord]:
        """Record ``(model, input, output, source)`` prices that differ from the
        price in force (the model's latest record); return what was recorded.

        Append-only: a call keeps the price that was in force at its time, so
        past reports do not change when prices do.

        >>> led = Ledger(":memory:")
        >>> [r.model for r in led.sync_prices([("m", 1.0, 2.0, "user")], ts=10.0)]
        ['m']
        >>> led.sync_prices([("m", 1.0, 2.0, "map")], ts=20.0)
        []
        >>> led.price_at("m", 5.0).input_cost_per_mtok, led.price_at("m", 30.0).ts
        (1.0, 10.0)
        """
        when = time.time() if ts is None else float(ts)
        wanted = [
            (m, float(i), float(o), src)
            for m, i, o, src in prices
            if i is not None and o is not None
        ]
        if not wanted:
            return []
        out: list[PriceRecord] = []
        with self._lock:
            self._check_pid()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for model, inp, outp, source in wanted:
                    cur = self._db.execute(
                        "SELECT input_cost_per_mtok, output_cost_per_mtok FROM prices "
                        "WHERE model = ? AND ts <= ? ORDER BY ts DESC, rowid DESC LIMIT 1",
                        (model, when),
                    ).fetchone()
                    if cur is not None and same_price(cur[0], inp) and same_price(cur[1], outp):
                        continue
                    rec = PriceRecord(when, model, inp, outp, source)
                    self._db.execute("INSERT INTO prices VALUES (?, ?, ?, ?, ?)", tuple(rec))
                    out.append(rec)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"ledger write failed: {exc}") from exc
        return out

    def prices(self, model: str | None = None) -> list[PriceRecord]:
        """The price history, oldest first (one model's, or every model's)."""
        if not self._has_prices:
            return []
        sql = "SELECT ts, model, input_cost_per_mtok, output_cost_per_mtok, source FROM prices"
        args: tuple[Any, ...] = ()
        if model is not None:
            sql += " WHERE model = ?"
            args = (model,)
        with self._lock:
            self._check_pid()
            rows = self._db.execute(sql + " ORDER BY ts, rowid", args).fetchall()
        return [PriceRecord(*r) for r in rows]

    def price_at(self, model: str, ts: float) -> PriceRecord | None:
        """The price of ``model`` in force at ``ts``: its latest record at or
        before ``ts``, else its earliest record (the ledger knew no older
        price), else None."""
        history = self.prices(model)
        if not history:
            return None
        i = bisect.bisect_right([r.ts for r in history], ts)
        return history[max(i - 1, 0)]

    def rows(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
        batch_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Rows in time order, filtered; streamed in batches so any size fits."""
        for row in self.select(
            NAMES,
            since=since,
            until=until,
            org=org,
            task_type=task_type,
            model=model,
            batch_size=batch_size,
        ):
            yield decode_row(row)

    def select(
        self,
        columns: Sequence[str],
        *,
        since: float | None = None,
        until: float | None = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
        batch_size: int = 1000,
    ) -> Iterator[tuple[Any, ...]]:
        """Raw values of ``columns`` (JSON columns undecoded), in time order.

        Pages by (ts, rowid), not OFFSET, so reading a million rows stays
        linear; the lock is released between pages, so writers are not held up.
        """
        bad = [c for c in columns if c not in NAMES]
        if bad:
            raise ValueError(f"unknown ledger columns: {bad}")
        where, args = filters(since, until, org, task_type, model)
        head = f"SELECT rowid, {', '.join(columns)} FROM calls"
        order = " ORDER BY ts, rowid LIMIT ?"
        ts_at = list(columns).index("ts") + 1 if "ts" in columns else None
        if ts_at is None:
            head = f"SELECT rowid, {', '.join(columns)}, ts FROM calls"
            ts_at = len(columns) + 1
        width = len(columns) + 1
        last: tuple[float, int] | None = None
        while True:
            cond = list(where)
            params = list(args)
            if last is not None:
                # Written so SQLite searches the ts index instead of scanning.
                cond.append("ts >= ? AND (ts > ? OR rowid > ?)")
                params += [last[0], last[0], last[1]]
            sql = head + (" WHERE " + " AND ".join(cond) if cond else "") + order
            with self._lock:
                self._check_pid()
                batch = self._db.execute(sql, (*params, batch_size)).fetchall()
            for row in batch:
                yield tuple(row[1:width])
            if len(batch) < batch_size:
                return
            last = (batch[-1][ts_at], batch[-1][0])

    def models(self) -> list[str]:
        """Every model the ledger has a call or a price for, sorted."""
        sql = "SELECT DISTINCT model FROM calls"
        if self._has_prices:
            sql += " UNION SELECT DISTINCT model FROM prices"
        with self._lock:
            self._check_pid()
            return sorted(r[0] for r in self._db.execute(sql))

    def count(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
    ) -> int:
        """Rows matching the filters (every row by default)."""
        return self.span(since=since, until=until, org=org, task_type=task_type, model=model)[0]

    def model_summary(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        org: str | None = None,
        task_type: str | None = None,
    ) -> dict[str, tuple[int, int, float | None]]:
        """Per model: (calls, holdout calls, highest input + output price per M
        tokens recorded on its calls), for the rows matching the filters."""
        where, args = filters(since, until, org, task_type, None)
        sql = (
            "SELECT model, COUNT(*), SUM(CASE WHEN holdout THEN 1 ELSE 0 END), "
            "MAX(input_cost_per_mtok + output_cost_per_mtok) FROM calls"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            self._check_pid()
            rows = self._db.execute(sql + " GROUP BY model", args).fetchall()
        return {m: (int(n), int(h or 0), p) for m, n, h, p in rows}

    def span(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        org: str | None = None,
        task_type: str | None = None,
        model: str | None = None,
    ) -> tuple[int, float | None, float | None]:
        """(rows, first ts, last ts) matching the filters."""
        where, args = filters(since, until, org, task_type, model)
        sql = "SELECT COUNT(*), MIN(ts), MAX(ts) FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            self._check_pid()
            n, lo, hi = self._db.execute(sql, args).fetchone()
        return int(n), lo, hi

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
