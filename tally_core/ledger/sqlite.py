"""The ledger: every call Tally was told about, in SQLite (WAL).

One row per call: when, which decision, the envelope's shape, the model, the
phase, tokens, latency, the cost at the prices in force at call time, the
outcome and the quality (joined later by decision id when feedback arrives).
Never any prompt or completion text: the row has no column that could hold it.
"""

from __future__ import annotations

import bisect
import logging
import math
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
from tally_core.ledger import _rollups
from tally_core.ledger._rollouts import ROLLOUT_NAMES as _ROLLOUT_NAMES
from tally_core.ledger._rollouts import rollout_ddl, rollout_filters, rollout_values
from tally_core.ledger._rows import (
    COLUMNS,
    ENVELOPE_COLUMNS,
    NAMES,
    SCHEMA_VERSION,
    PriceRecord,
    decode_row,
    encode_row,
    encode_value,
    same_price,
)
from tally_core.ledger.query import HOUR, LedgerQuery

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
_ALL = LedgerQuery()
_REPORT_AGG = {"first_ts": "MIN", "lat_min": "MIN", "last_ts": "MAX", "lat_max": "MAX",
               "cost_usd": "SUM", "quality_sum": "SUM"}


def _isum(col: str) -> str:
    # PostgreSQL sums integers as NUMERIC (Decimal in Python): keep them integers.
    return f"CAST(SUM({col}) AS BIGINT)"

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
        self._columns = frozenset(NAMES)
        self._rollups = True  # the roll-up tables exist and are kept
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
            self._migrate()
        except sqlite3.Error as exc:
            if hasattr(self, "_db"):
                self._rollback()
            raise StoreError(f"cannot open ledger at {self.path}: {exc}") from exc
        self._closed = False

    def _migrate(self) -> None:
        """Create the schema, or bring an older ledger's up to ``SCHEMA_VERSION``
        one small step at a time (each step and its version row in one
        transaction, so processes opening the ledger together apply it once)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        cols = ", ".join(f"{c} {t}" for c, t in COLUMNS)
        fresh = not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls'"
        ).fetchone()
        db.execute(f"CREATE TABLE IF NOT EXISTS calls ({cols})")
        db.execute("CREATE INDEX IF NOT EXISTS calls_decision ON calls(decision_id)")
        db.execute("CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS prices (ts REAL, model TEXT, "
            "input_cost_per_mtok REAL, output_cost_per_mtok REAL, source TEXT)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS rejected (ts REAL, event_id TEXT, "
            "decision_id TEXT, field TEXT, reason TEXT)"
        )
        for stmt in rollout_ddl():  # rollout transitions (additive, IF NOT EXISTS)
            db.execute(stmt)
        db.execute(
            "CREATE TABLE IF NOT EXISTS tally_ledger_schema (version INTEGER NOT NULL, "
            "applied_at REAL NOT NULL)"
        )
        have = db.execute("SELECT MAX(version) FROM tally_ledger_schema").fetchone()[0]
        if have is None:
            # A ledger from before the version table is at version 1.
            have = SCHEMA_VERSION if fresh else 1
            if fresh:
                for stmt in _rollups.ddl("sqlite"):
                    db.execute(stmt)
            db.execute("INSERT INTO tally_ledger_schema VALUES (?, ?)", (have, time.time()))
        if have > SCHEMA_VERSION:
            db.execute("ROLLBACK")
            raise StoreError(
                f"the ledger at {self.path} has schema version {have}; this Tally knows up "
                f"to {SCHEMA_VERSION}: upgrade tally-router"
            )
        for version, step in _STEPS:
            if have < version:
                step(db)
                db.execute(
                    "INSERT INTO tally_ledger_schema VALUES (?, ?)", (version, time.time())
                )
        db.execute("COMMIT")

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
        # An older ledger read as it is: columns it lacks read as NULL, and
        # without roll-ups every report reads rows.
        self._columns = frozenset(r[1] for r in self._db.execute("PRAGMA table_info(calls)"))
        version = 1
        if "tally_ledger_schema" in tables:
            version = self._db.execute("SELECT MAX(version) FROM tally_ledger_schema").fetchone()[0]
        self._rollups = (version or 1) >= 3 and "rollup_hour" in tables

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
            db = self._db
            try:
                # IMMEDIATE: the write lock from the start, so the rows after
                # ``last`` are this transaction's own.
                db.execute("BEGIN IMMEDIATE")
                last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM calls").fetchone()[0]
                before = db.total_changes
                try:
                    db.executemany(sql, values)
                except _ROW_ERRORS:
                    # One row SQLite cannot hold: redo them one by one in the
                    # same transaction, leaving out only the bad ones.
                    db.execute("ROLLBACK")
                    db.execute("BEGIN IMMEDIATE")
                    # Another process may have written between the two transactions.
                    last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM calls").fetchone()[0]
                    before = db.total_changes
                    for i, v in zip(at, values, strict=True):
                        try:
                            db.execute(sql, v)
                        except _ROW_ERRORS as exc:
                            rejected.append((i, f"{type(exc).__name__}: {cut(str(exc))}"))
                new = db.total_changes - before
                if new and self._rollups:
                    # Only the rows inserted (a known event id inserted none).
                    _add_rollups(db, "(SELECT rowid AS seq, * FROM calls WHERE rowid > ?) AS c",
                                 (last,))
                db.execute("COMMIT")
                return new, sorted(rejected)
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
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute(
                    f"SELECT rowid, {', '.join(_rollups.FEEDBACK_COLS)} FROM calls "
                    "WHERE decision_id = ? ORDER BY ts DESC LIMIT 1",
                    (decision_id,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE calls SET quality = ?, quality_applied = ?, "
                        "slugs = COALESCE(?, slugs), feedback_ts = ? WHERE rowid = ?",
                        (quality, quality, encode_value("slugs", slugs), ts, row[0]),
                    )
                    if self._rollups:
                        for sql, args in _rollups.feedback_updates("?", row[1:], quality):
                            db.execute(sql, args)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
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
        self, query: LedgerQuery | None = None, *, batch_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Rows in time order, filtered; streamed in batches so any size fits."""
        for row in self.select(NAMES, query, batch_size=batch_size):
            yield decode_row(row)

    def _cols(self, columns: Sequence[str]) -> str:
        bad = [c for c in columns if c not in NAMES]
        if bad:
            raise ValueError(f"unknown ledger columns: {bad}")
        # A column an older (read-only) ledger lacks reads as NULL.
        return ", ".join(c if c in self._columns else f"NULL AS {c}" for c in columns)

    def select(
        self,
        columns: Sequence[str],
        query: LedgerQuery | None = None,
        *,
        batch_size: int = 1000,
    ) -> Iterator[tuple[Any, ...]]:
        """Raw values of ``columns`` (JSON columns undecoded), in time order.

        Pages by (ts, rowid), not OFFSET, so reading a million rows stays
        linear; the lock is released between pages, so writers are not held up.
        """
        cols = self._cols(columns)
        where, args = (query or _ALL).where()
        head = f"SELECT rowid, ts, {cols} FROM calls"
        last: tuple[float, int] | None = None
        while True:
            cond = list(where)
            params = list(args)
            if last is not None:
                # Written so SQLite searches the ts index instead of scanning.
                cond.append("ts >= ? AND (ts > ? OR rowid > ?)")
                params += [last[0], last[0], last[1]]
            sql = head + (" WHERE " + " AND ".join(cond) if cond else "")
            sql += " ORDER BY ts, rowid LIMIT ?"
            batch = self._fetch(sql, (*params, batch_size))
            for row in batch:
                yield tuple(row[2:])
            if len(batch) < batch_size:
                return
            last = (batch[-1][1], batch[-1][0])

    # -- aggregates, shared by both engines (``_mark`` and ``_fetch`` differ) --

    _mark = "?"

    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._check_pid()
            return self._db.execute(sql, tuple(args)).fetchall()

    def uses_rollups(self, query: LedgerQuery | None = None) -> bool:
        """Whether the hourly roll-ups can answer ``query``: the ledger keeps
        them (an older ledger opened read-only may not) and its time range
        falls on whole hours (UTC)."""
        return self._rollups and (query or _ALL).hourly

    def _where(self, query: LedgerQuery | None, rollup: bool) -> tuple[str, list[Any]]:
        cond, args = (query or _ALL).where(mark=self._mark, ts="hour" if rollup else "ts")
        return (" WHERE " + " AND ".join(cond) if cond else ""), args

    def models(self) -> list[str]:
        """Every model the ledger has a call or a price for, sorted."""
        sql = "SELECT DISTINCT model FROM calls"
        if self._has_prices:
            sql += " UNION SELECT DISTINCT model FROM prices"
        return sorted(r[0] for r in self._fetch(sql) if r[0] is not None)

    def count(self, query: LedgerQuery | None = None) -> int:
        """Rows matching the query (every row by default)."""
        return self.span(query)[0]

    def span(self, query: LedgerQuery | None = None) -> tuple[int, float | None, float | None]:
        """(rows, first ts, last ts) matching the query (from the roll-ups
        when they can answer it)."""
        if self.uses_rollups(query):
            where, args = self._where(query, True)
            sql = f"SELECT {_isum('calls')}, MIN(first_ts), MAX(last_ts) FROM rollup_hour{where}"
        else:
            where, args = self._where(query, False)
            sql = f"SELECT COUNT(*), MIN(ts), MAX(ts) FROM calls{where}"
        n, lo, hi = self._fetch(sql, args)[0]
        return int(n or 0), lo, hi

    def model_summary(
        self, query: LedgerQuery | None = None
    ) -> dict[str, tuple[int, int, float | None]]:
        """Per model: (calls, holdout calls, highest input + output price per M
        tokens recorded on its calls), for the rows matching the query."""
        if self.uses_rollups(query):
            where, args = self._where(query, True)
            sql = (
                f"SELECT model, {_isum('calls')}, "
                f"{_isum('CASE WHEN holdout = 1 THEN calls ELSE 0 END')}, "
                f"MAX(price_max) FROM rollup_detail{where} GROUP BY model"
            )
        else:
            where, args = self._where(query, False)
            sql = (
                "SELECT model, COUNT(*), SUM(CASE WHEN holdout <> 0 THEN 1 ELSE 0 END), "
                f"MAX(input_cost_per_mtok + output_cost_per_mtok) FROM calls{where} "
                "GROUP BY model"
            )
        return {m: (int(n), int(h or 0), p) for m, n, h, p in self._fetch(sql, args)}

    def report_rollup(
        self, query: LedgerQuery | None, width: int
    ) -> list[tuple[Any, ...]]:
        """The hourly roll-ups summed per (bucket start, org, task type, model),
        buckets ``width`` seconds long (a multiple of an hour): each row is
        those four then ``_rollups.REPORT``'s figures. ``uses_rollups(query)``
        must hold."""
        if not self.uses_rollups(query) or width % HOUR:
            raise ValueError("the roll-ups cannot answer this query")
        where, args = self._where(query, True)
        mod = "%%" if self._mark == "%s" else "%"
        bucket = "hour" if width == HOUR else (
            f"(hour - ((hour {mod} {width}) + {width}) {mod} {width})"
        )
        sums = ", ".join(
            f"{_REPORT_AGG[c]}({c})" if c in _REPORT_AGG else _isum(c) for c in _rollups.REPORT
        )
        sql = (
            f"SELECT {bucket} AS b, org, task_type, model, {sums} FROM rollup_hour{where} "
            "GROUP BY b, org, task_type, model"
        )
        return self._fetch(sql, args)

    def savings_rollup(
        self,
        query: LedgerQuery | None,
        schedule: Sequence[tuple[float, float, float]] | None,
        skip_hours: Sequence[int] = (),
    ) -> list[tuple[Any, ...]]:
        """The detail roll-ups summed per (task type, model, holdout, floor),
        leaving out ``skip_hours``: each row is those four, then calls, cost,
        input and output tokens, calls with both token counts, the cost of
        those without, the tokens of those with them priced at ``schedule``
        (``[(from ts, input, output per M tokens)]`` oldest first: an hour
        takes the latest price from at or before its start, else the first;
        0 with no schedule), and the quality moments (n, sum, sum of
        squares, graded). ``uses_rollups(query)`` must hold."""
        if not self.uses_rollups(query):
            raise ValueError("the roll-ups cannot answer this query")
        m = self._mark
        where, args = self._where(query, True)
        if skip_hours:
            where += (" AND " if where else " WHERE ") + (
                f"hour NOT IN ({', '.join(m for _ in skip_hours)})"
            )
            args += [int(h) for h in skip_hours]
        priced, pargs = "CAST(0 AS DOUBLE PRECISION)", []
        if schedule:
            # The price in force at the hour's start: the latest record at or
            # before it, else the first record.
            newest_first = list(reversed(schedule))
            case = {}
            for side, at in (("in", 1), ("out", 2)):
                whens = " ".join(f"WHEN hour >= {m} THEN {m}" for _ in newest_first[:-1])
                case[side] = f"CASE {whens} ELSE {m} END" if whens else m
                pargs += [x for r in newest_first[:-1] for x in (r[0], r[at])]
                pargs.append(newest_first[-1][at])
            priced = f"SUM(tok_input * {case['in']} + tok_output * {case['out']})"
        sql = (
            f"SELECT task_type, model, holdout, qfloor, {_isum('calls')}, SUM(cost_usd), "
            f"{_isum('input_tokens')}, {_isum('output_tokens')}, {_isum('tok_calls')}, "
            f"SUM(untok_cost), {priced}, {_isum('q_n')}, SUM(q_sum), SUM(q_ss), "
            f"{_isum('q_graded')} FROM rollup_detail"
            f"{where} GROUP BY task_type, model, holdout, qfloor"
        )
        return self._fetch(sql, [*pargs, *args])

    def latest_prices(
        self, query: LedgerQuery | None
    ) -> dict[tuple[str, str], tuple[float, float]]:
        """Per (task type, model): the (input, output) price recorded on its
        latest priced call in the query's range, from the roll-ups."""
        if not self.uses_rollups(query):
            raise ValueError("the roll-ups cannot answer this query")
        where, args = self._where(query, True)
        cond = f"{where}{' AND' if where else ' WHERE'} price_ts IS NOT NULL"
        latest = self._fetch(
            f"SELECT task_type, model, MAX(price_ts) FROM rollup_detail{cond} "
            "GROUP BY task_type, model",
            args,
        )
        m = self._mark
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for tt, model, pts in latest:
            # The group's row at that time: a point lookup on the key's hour.
            found = self._fetch(
                f"SELECT price_in, price_out FROM rollup_detail WHERE hour = {m} AND "
                f"task_type = {m} AND model = {m} AND price_ts = {m} LIMIT 1",
                (math.floor(pts / HOUR) * HOUR, tt, model, pts),
            )
            if found:
                out[(tt, model)] = (found[0][0], found[0][1])
        return out

    def distinct(self, column: str, query: LedgerQuery | None = None) -> list[str]:
        """The distinct orgs, task types or models of the calls matching the
        query, sorted (roll-ups when they can answer)."""
        if column not in ("org", "task_type", "model"):
            raise ValueError(f"distinct: not a roll-up key: {column!r}")
        rollup = self.uses_rollups(query)
        where, args = self._where(query, rollup)
        table = "rollup_hour" if rollup else "calls"
        return sorted(r[0] for r in self._fetch(
            f"SELECT DISTINCT {column} FROM {table}{where}", args))

    def floors(self, query: LedgerQuery | None = None) -> dict[float, int]:
        """Calls per quality floor asked for (calls without one left out)."""
        if self.uses_rollups(query):
            where, args = self._where(query, True)
            sql = (f"SELECT qfloor, {_isum('calls')} FROM rollup_detail{where} "
                   "GROUP BY qfloor")
        else:
            where, args = self._where(query, False)
            sql = f"SELECT COALESCE(quality_floor, -1.0), COUNT(*) FROM calls{where} GROUP BY 1"
        return {float(f): int(k) for f, k in self._fetch(sql, args) if f >= 0.0}

    def task_mix(self, query: LedgerQuery | None = None) -> list[tuple[str, int, int]]:
        """(task type, calls whose task type was inferred, calls it was given
        for) matching the query, by task type (roll-ups when they can answer)."""
        if self.uses_rollups(query):
            where, args = self._where(query, True)
            sql = (
                f"SELECT task_type, {_isum('inferred_calls')}, "
                f"{_isum('calls - inferred_calls')} FROM rollup_detail{where} "
                "GROUP BY task_type ORDER BY task_type"
            )
        else:
            where, args = self._where(query, False)
            flag = "0"
            if "inferred" in self._columns:
                dialect = "postgres" if self._mark == "%s" else "sqlite"
                flag = f"CASE WHEN {_rollups.inferred_task(dialect)} THEN 1 ELSE 0 END"
            sql = (
                f"SELECT task_type, SUM({flag}), SUM(1 - {flag}) FROM calls{where} "
                "GROUP BY task_type ORDER BY task_type"
            )
        return [(t, int(a or 0), int(b or 0)) for t, a, b in self._fetch(sql, args)]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _add_rollups(db: sqlite3.Connection, source: str, args: Sequence[Any]) -> None:
    """Add the calls ``source`` selects to both roll-up tables (in the caller's
    transaction)."""
    ctes = _rollups.source_ctes("sqlite", source)
    db.execute(f"WITH {ctes} {_rollups.hour_insert('sqlite')}", tuple(args))
    db.execute(f"WITH {ctes} {_rollups.detail_insert('sqlite')}", tuple(args))


def _step_inferred(db: sqlite3.Connection) -> None:
    # Step 2: which envelope fields were inferred (a ledger created since has it).
    have = {r[1] for r in db.execute("PRAGMA table_info(calls)")}
    if "inferred" not in have:
        db.execute("ALTER TABLE calls ADD COLUMN inferred TEXT")


def _step_rollups(db: sqlite3.Connection) -> None:
    # Step 3: the hourly roll-ups, built from the rows already there.
    for stmt in _rollups.ddl("sqlite"):
        db.execute(stmt)
    db.execute("DELETE FROM rollup_hour")
    db.execute("DELETE FROM rollup_detail")
    _add_rollups(db, "(SELECT rowid AS seq, * FROM calls) AS c", ())


# (version, step): each brings a ledger from the version before to this one.
_STEPS = ((2, _step_inferred), (3, _step_rollups))
