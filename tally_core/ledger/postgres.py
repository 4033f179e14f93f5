"""The ledger on PostgreSQL: one call log that every replica of a fleet writes.

``PostgresLedger("postgresql://user:pass@host:5432/db")`` is a ``Ledger``
(same rows, same queries, same answers) whose tables live in PostgreSQL, as
LiteLLM's proxy keeps its spend logs. Tally creates the schema (and records
its version in ``tally_ledger_schema``); a batch is inserted in one
transaction with ``ON CONFLICT (event_id) DO NOTHING``, so a batch replayed
after an outage never doubles a row. A server that cannot be reached raises
``StoreError`` naming the server (never the password): the telemetry queue
keeps the batch, retries it in order and spools it, as for the state store.

Needs psycopg 3: ``pip install 'tally-router[postgres]'``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tally_core._brief import cut
from tally_core.errors import StoreError
from tally_core.ledger import _rollups
from tally_core.ledger._rollouts import ROLLOUT_NAMES as _ROLLOUT_NAMES
from tally_core.ledger._rollouts import rollout_ddl, rollout_filters, rollout_values
from tally_core.ledger._rows import (
    COLUMNS,
    NAMES,
    SCHEMA_VERSION,
    PriceRecord,
    decode_row,
    encode_row,
    encode_value,
    same_price,
)
from tally_core.ledger.query import LedgerQuery
from tally_core.ledger.sqlite import Ledger

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "PostgresLedger", "redact_url"]

# SQLite's affinities, in PostgreSQL's words (REAL there is 4 bytes: too few).
_TYPES = {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
# One advisory lock id for "creating Tally's schema", so replicas that start
# together do not race on CREATE TABLE.
_SCHEMA_LOCK = 0x7A11_1ED6
_ABANDONED: list[Any] = []  # connections inherited across fork: kept, never closed


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            "PostgresLedger needs psycopg 3: pip install 'tally-router[postgres]'"
        ) from exc
    return psycopg


def redact_url(url: str) -> str:
    """``url`` without its password, fit for logs and errors.

    >>> redact_url("postgresql://tally:s3cret@db.internal:5432/calls")
    'postgresql://tally@db.internal:5432/calls'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _pg_type(t: str) -> str:
    return " ".join(_TYPES.get(w, w) for w in t.split())


def _schema() -> list[str]:
    cols = ", ".join(f"{c} {_pg_type(t)}" for c, t in COLUMNS)
    return [
        "CREATE TABLE IF NOT EXISTS tally_ledger_schema "
        "(version INTEGER NOT NULL, applied_at DOUBLE PRECISION NOT NULL)",
        # seq: insertion order, the tie-break SQLite's rowid gives.
        f"CREATE TABLE IF NOT EXISTS calls (seq BIGSERIAL, {cols})",
        "CREATE INDEX IF NOT EXISTS calls_decision ON calls(decision_id)",
        "CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts, seq)",
        "CREATE TABLE IF NOT EXISTS prices (seq BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION, "
        "model TEXT, input_cost_per_mtok DOUBLE PRECISION, "
        "output_cost_per_mtok DOUBLE PRECISION, source TEXT)",
        "CREATE INDEX IF NOT EXISTS prices_model ON prices(model, ts)",
        "CREATE TABLE IF NOT EXISTS rejected (seq BIGSERIAL PRIMARY KEY, "
        "ts DOUBLE PRECISION, event_id TEXT, decision_id TEXT, field TEXT, reason TEXT)",
        # Migration: rollout transitions (additive, so the schema version stays).
        *rollout_ddl(_TYPES),
    ]


_INSERT = (
    f"INSERT INTO calls ({', '.join(NAMES)}) VALUES ({', '.join('%s' for _ in NAMES)}) "
    "ON CONFLICT (event_id) DO NOTHING"
)


_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS tally_batch (n INTEGER, "
    + ", ".join(f"{c} {_TYPES.get(t.split()[0], t.split()[0])}" for c, t in COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_COPY = f"COPY tally_batch (n, {', '.join(NAMES)}) FROM STDIN"
_MERGE = (
    f"INSERT INTO calls ({', '.join(NAMES)}) SELECT {', '.join(NAMES)} FROM tally_batch "
    "ORDER BY n ON CONFLICT (event_id) DO NOTHING"
)
# The merge, and the roll-ups of the rows it inserted (RETURNING names only
# those: a known event id returns nothing), in one statement.
_MERGE_ROLLUP = (
    f"WITH ins AS ({_MERGE} RETURNING *), "
    f"{_rollups.source_ctes('postgres', 'ins')}, "
    f"h AS ({_rollups.hour_insert('postgres')}), "
    f"d AS ({_rollups.detail_insert('postgres')}) "
    "SELECT COUNT(*) FROM ins"
)


def _add_rollups(cur: psycopg.Cursor[Any], source: str, args: Sequence[Any]) -> None:
    ctes = _rollups.source_ctes("postgres", source)
    cur.execute(f"WITH {ctes} {_rollups.hour_insert('postgres')}", tuple(args))
    cur.execute(f"WITH {ctes} {_rollups.detail_insert('postgres')}", tuple(args))


def _step_inferred(cur: psycopg.Cursor[Any]) -> None:
    # Step 2: which envelope fields were inferred (a ledger created since has it).
    cur.execute("ALTER TABLE calls ADD COLUMN IF NOT EXISTS inferred TEXT")


def _step_rollups(cur: psycopg.Cursor[Any]) -> None:
    # Step 3: the hourly roll-ups, built from the rows already there.
    for stmt in _rollups.ddl("postgres"):
        cur.execute(stmt)
    cur.execute("DELETE FROM rollup_hour")
    cur.execute("DELETE FROM rollup_detail")
    _add_rollups(cur, "calls", ())


# (version, step): each brings a ledger from the version before to this one.
_STEPS = ((2, _step_inferred), (3, _step_rollups))


class PostgresLedger(Ledger):
    """The call log in a PostgreSQL database, shared by every replica.

    Parameters
    ----------
    url
        ``postgresql://user:password@host:5432/dbname`` (libpq's URL; query
        parameters such as ``sslmode=require`` pass through).
    readonly
        Open an existing ledger for reports, never creating or writing one.
    connect_timeout_s
        How long to wait for the server before calling it unreachable.
    """

    def __init__(
        self, url: str, *, readonly: bool = False, connect_timeout_s: float = 5.0
    ) -> None:
        self._pg = _psycopg()
        self._url = url
        self.path = redact_url(url)
        self.readonly = readonly
        self._has_prices = True
        self._columns = frozenset(NAMES)
        self._rollups = True
        self._timeout = max(1, round(connect_timeout_s))
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: psycopg.Connection[Any] | None = None
        self._staged: psycopg.Connection[Any] | None = None  # has the staging table
        self._closed = False
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())
        with self._use() as conn:
            if readonly:
                found = conn.execute("SELECT to_regclass('calls') IS NOT NULL").fetchone()
                if not (found and found[0]):
                    raise StoreError(f"{self.path} is not a Tally ledger (no calls table)")
                # An older ledger read as it is (see ``Ledger``).
                self._columns = frozenset(
                    r[0] for r in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'calls' AND table_schema = current_schema()"
                    )
                )
                row = conn.execute("SELECT MAX(version) FROM tally_ledger_schema").fetchone()
                self._rollups = bool(row and row[0] and row[0] >= 3)
                return
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                fresh = not (cur.execute("SELECT to_regclass('calls') IS NOT NULL")
                             .fetchone() or (False,))[0]
                for stmt in _schema():
                    cur.execute(stmt)
                row = cur.execute("SELECT MAX(version) FROM tally_ledger_schema").fetchone()
                have = row[0] if row else None
                if have is None:
                    have = SCHEMA_VERSION if fresh else 1
                    if fresh:
                        for stmt in _rollups.ddl("postgres"):
                            cur.execute(stmt)
                    cur.execute(
                        "INSERT INTO tally_ledger_schema VALUES (%s, %s)", (have, time.time())
                    )
                elif have > SCHEMA_VERSION:
                    raise StoreError(
                        f"the ledger at {self.path} has schema version {have}; this Tally "
                        f"knows up to {SCHEMA_VERSION}: upgrade tally-router"
                    )
                for version, step in _STEPS:
                    if have < version:
                        step(cur)
                        cur.execute(
                            "INSERT INTO tally_ledger_schema VALUES (%s, %s)",
                            (version, time.time()),
                        )

    # -- the connection --------------------------------------------------------

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def _use(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, under the lock; connection faults become ``StoreError``."""
        pg = self._pg
        with self._lock:
            if self._closed:
                raise StoreError(f"the ledger at {self.path} is closed")
            if self._pid != os.getpid():
                # A connection must never cross a fork: the child opens its own.
                if self._conn is not None:
                    _ABANDONED.append(self._conn)
                self._conn, self._pid = None, os.getpid()
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = pg.connect(
                        self._url, autocommit=True, connect_timeout=self._timeout
                    )
                yield self._conn
            except (pg.OperationalError, pg.InterfaceError) as exc:
                self._drop()
                raise StoreError(
                    f"PostgreSQL ledger at {self.path} unreachable: {self._scrub(exc)}"
                ) from None
            except pg.Error as exc:
                raise StoreError(f"ledger at {self.path} failed: {self._scrub(exc)}") from None

    def _drop(self) -> None:
        conn, self._conn, self._staged = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                pass

    def _scrub(self, exc: BaseException) -> str:
        msg = cut(str(exc).strip().replace("\n", " "), 300)
        secret = urlsplit(self._url).password
        return msg.replace(secret, "***") if secret else msg

    # -- writes ------------------------------------------------------------------

    def write(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[tuple[int, str]]]:
        """``append`` that returns (rows new, [(index, reason) of rows left out]).

        One transaction per batch: every storable row is committed, or none is
        and ``StoreError`` is raised (the queue retries the batch; rows it
        already holds are skipped by event id).
        """
        if not rows:
            return 0, []
        pg = self._pg
        row_errors = (OverflowError, TypeError, ValueError, pg.DataError,
                      pg.IntegrityError, pg.ProgrammingError)
        rejected: list[tuple[int, str]] = []
        values: list[list[Any]] = []
        at: list[int] = []
        for i, r in enumerate(rows):
            try:
                values.append(encode_row(r))
                at.append(i)
            except (TypeError, ValueError) as exc:
                rejected.append((i, f"{type(exc).__name__}: {cut(str(exc))}"))
        if not values:
            return 0, sorted(rejected)
        with self._use() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    return self._copy_in(conn, cur, values), sorted(rejected)
            except row_errors:
                # The rollback may have taken a just-created staging table with it.
                self._staged = None
            # One row PostgreSQL cannot hold: redo them one by one, each in
            # a savepoint, leaving out only the bad ones.
            new: list[str] = []
            with conn.transaction(), conn.cursor() as cur:
                for i, v in zip(at, values, strict=True):
                    try:
                        with conn.transaction():
                            cur.execute(_INSERT, v)
                            if cur.rowcount > 0:
                                new.append(v[0])
                    except row_errors as exc:
                        rejected.append((i, f"{type(exc).__name__}: {cut(str(exc))}"))
                if new:
                    _add_rollups(cur, "(SELECT * FROM calls WHERE event_id = ANY(%s)) AS c",
                                 (new,))
            return len(new), sorted(rejected)

    def _copy_in(self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any],
                 values: list[list[Any]]) -> int:
        # COPY into a per-connection staging table, then one INSERT ... SELECT
        # that skips known event ids: several times faster than row inserts,
        # and ``n`` keeps the batch's order in ``seq``.
        if conn is not self._staged:
            cur.execute(_STAGE)
            self._staged = conn
        with cur.copy(_COPY) as copy:
            for n, v in enumerate(values):
                copy.write_row((n, *v))
        row = cur.execute(_MERGE_ROLLUP).fetchone()
        return int(row[0]) if row else 0

    def record_rejected(
        self, rows: Iterable[tuple[float | None, str | None, str | None, str, str]]
    ) -> None:
        """Remember events that were rejected: (ts, event_id, decision_id, field, reason)."""
        values = [(ts, e, d, f[:64], cut(r, 300)) for ts, e, d, f, r in rows]
        if not values:
            return
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rejected (ts, event_id, decision_id, field, reason) "
                "VALUES (%s, %s, %s, %s, %s)",
                values,
            )

    def record_rollouts(self, events: Iterable[Any]) -> None:
        """Write rollout transitions; one already here (by event id) is skipped."""
        values = rollout_values(events)
        if not values:
            return
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO rollouts ({', '.join(_ROLLOUT_NAMES)}) VALUES "
                f"({', '.join('%s' for _ in _ROLLOUT_NAMES)}) ON CONFLICT (event_id) DO NOTHING",
                values,
            )

    def rollouts(
        self, *, model: str | None = None, org: str | None = None,
        task_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rollout transitions (advanced, done, rolled-back), oldest first."""
        where, params = rollout_filters(model, org, task_type, "%s")
        with self._use() as conn:
            if conn.execute("SELECT to_regclass('rollouts') IS NULL").fetchone()[0]:  # type: ignore[index]
                return []  # a read-only ledger from before the table existed
            cur = conn.execute(
                f"SELECT {', '.join(_ROLLOUT_NAMES)} FROM rollouts{where} ORDER BY ts", params)
            return [dict(zip(_ROLLOUT_NAMES, r, strict=True)) for r in cur]

    def rejected(self) -> list[dict[str, Any]]:
        """Events rejected so far, oldest first."""
        with self._use() as conn:
            cur = conn.execute(
                "SELECT ts, event_id, decision_id, field, reason FROM rejected ORDER BY seq"
            )
            return [
                dict(zip(("ts", "event_id", "decision_id", "field", "reason"), r, strict=True))
                for r in cur
            ]

    def set_feedback(
        self, decision_id: str, quality: float, slugs: Sequence[str] | None, ts: float
    ) -> None:
        """Record late quality for a decision's call."""
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            row = cur.execute(
                f"SELECT seq, {', '.join(_rollups.FEEDBACK_COLS)} FROM calls "
                "WHERE decision_id = %s ORDER BY ts DESC, seq DESC LIMIT 1 FOR UPDATE",
                (decision_id,),
            ).fetchone()
            if row is None:
                return
            cur.execute(
                "UPDATE calls SET quality = %s, quality_applied = %s, "
                "slugs = COALESCE(%s, slugs), feedback_ts = %s WHERE seq = %s",
                (quality, quality, encode_value("slugs", slugs), ts, row[0]),
            )
            if self._rollups:
                for sql, args in _rollups.feedback_updates("%s", row[1:], quality):
                    cur.execute(sql, args)

    def record_prices(self, rows: Iterable[tuple[float, str, float, float, str]]) -> None:
        """Remember a price change (ts, model, input, output, source)."""
        values = list(rows)
        if not values:
            return
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO prices (ts, model, input_cost_per_mtok, output_cost_per_mtok, "
                "source) VALUES (%s, %s, %s, %s, %s)",
                values,
            )

    def sync_prices(
        self,
        prices: Iterable[tuple[str, float | None, float | None, str]],
        *,
        ts: float | None = None,
    ) -> list[PriceRecord]:
        """Record the prices that differ from the price in force (see ``Ledger``).

        Replicas starting together serialise on a table lock, so one price
        change is recorded once, not once per replica.
        """
        when = time.time() if ts is None else float(ts)
        wanted = [
            (m, float(i), float(o), src) for m, i, o, src in prices
            if i is not None and o is not None
        ]
        if not wanted:
            return []
        out: list[PriceRecord] = []
        with self._use() as conn, conn.transaction():
            conn.execute("LOCK TABLE prices IN SHARE ROW EXCLUSIVE MODE")
            for model, inp, outp, source in wanted:
                cur = conn.execute(
                    "SELECT input_cost_per_mtok, output_cost_per_mtok FROM prices "
                    "WHERE model = %s AND ts <= %s ORDER BY ts DESC, seq DESC LIMIT 1",
                    (model, when),
                ).fetchone()
                if cur is not None and same_price(cur[0], inp) and same_price(cur[1], outp):
                    continue
                rec = PriceRecord(when, model, inp, outp, source)
                conn.execute(
                    "INSERT INTO prices (ts, model, input_cost_per_mtok, output_cost_per_mtok, "
                    "source) VALUES (%s, %s, %s, %s, %s)",
                    tuple(rec),
                )
                out.append(rec)
        return out

    # -- reads -------------------------------------------------------------------

    def get(self, decision_id: str) -> dict[str, Any] | None:
        """The latest row for a decision, or None."""
        with self._use() as conn:
            row = conn.execute(
                f"SELECT {', '.join(NAMES)} FROM calls WHERE decision_id = %s "
                "ORDER BY ts DESC, seq DESC LIMIT 1",
                (decision_id,),
            ).fetchone()
        return None if row is None else decode_row(row)

    def prices(self, model: str | None = None) -> list[PriceRecord]:
        """The price history, oldest first (one model's, or every model's)."""
        sql = "SELECT ts, model, input_cost_per_mtok, output_cost_per_mtok, source FROM prices"
        args: tuple[Any, ...] = ()
        if model is not None:
            sql += " WHERE model = %s"
            args = (model,)
        with self._use() as conn:
            rows = conn.execute(sql + " ORDER BY ts, seq", args).fetchall()
        return [PriceRecord(*r) for r in rows]

    def select(
        self,
        columns: Sequence[str],
        query: LedgerQuery | None = None,
        *,
        batch_size: int = 1000,
    ) -> Iterator[tuple[Any, ...]]:
        """Raw values of ``columns`` (JSON columns undecoded), in time order,
        paged by (ts, seq) on the ``calls_ts`` index; the lock is released
        between pages."""
        cols = self._cols(columns)
        where, args = (query or LedgerQuery()).where(mark="%s")
        head = f"SELECT seq, ts, {cols} FROM calls" if columns else "SELECT seq, ts FROM calls"
        last: tuple[float, int] | None = None
        while True:
            cond = list(where)
            params = list(args)
            if last is not None:
                cond.append("(ts, seq) > (%s, %s)")
                params += [last[0], last[1]]
            sql = head + (" WHERE " + " AND ".join(cond) if cond else "")
            sql += " ORDER BY ts, seq LIMIT %s"
            batch = self._fetch(sql, (*params, batch_size))
            for row in batch:
                yield tuple(row[2:])
            if len(batch) < batch_size:
                return
            last = (batch[-1][1], batch[-1][0])

    _mark = "%s"

    def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._use() as conn:
            return conn.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._pid == os.getpid():
                    self._drop()
