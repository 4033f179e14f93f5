"""The ledger: every call Tally was told about, in SQLite (WAL).

One row per call: when, which decision, the envelope's shape, the model, the
phase, tokens, latency, the cost at the prices in force at call time, the
outcome and the quality (joined later by decision id when feedback arrives).
Never any prompt or completion text: the row has no column that could hold it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tally_core.errors import StoreError

__all__ = ["COLUMNS", "Ledger"]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "TEXT PRIMARY KEY"),
    ("decision_id", "TEXT"),
    ("ts", "REAL NOT NULL"),
    ("org", "TEXT NOT NULL"),
    ("task_type", "TEXT NOT NULL"),
    ("cell", "TEXT"),
    ("structure_type", "TEXT"),
    ("context_length", "TEXT"),
    ("tools_used", "INTEGER"),
    ("time_sensitive", "INTEGER"),
    ("quality_floor", "REAL"),
    ("tags", "TEXT"),
    ("model", "TEXT NOT NULL"),
    ("phase", "TEXT"),
    ("confidence", "REAL"),
    ("holdout", "INTEGER"),
    ("input_tokens", "INTEGER"),
    ("output_tokens", "INTEGER"),
    ("latency_ms", "REAL"),
    ("cost_usd", "REAL"),
    ("input_cost_per_mtok", "REAL"),
    ("output_cost_per_mtok", "REAL"),
    ("success", "INTEGER"),
    ("quality", "REAL"),
    ("slugs", "TEXT"),
    ("error", "TEXT"),
    ("quality_applied", "REAL"),
    ("clock", "REAL"),
    ("feedback_ts", "REAL"),
)
_NAMES = tuple(c for c, _ in COLUMNS)
_JSON_COLS = ("tags", "slugs")
_FILTERS = {"org": "org = ?", "task_type": "task_type = ?", "model": "model = ?"}


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

    def __init__(self, path: str | os.PathLike[str] = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
                self.path = str(Path(self.path).expanduser())
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=30.0, isolation_level=None
            )
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            cols = ", ".join(f"{c} {t}" for c, t in COLUMNS)
            self._db.execute(f"CREATE TABLE IF NOT EXISTS calls ({cols})")
            self._db.execute("CREATE INDEX IF NOT EXISTS calls_decision ON calls(decision_id)")
            self._db.execute("CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS prices (ts REAL, model TEXT, "
                "input_cost_per_mtok REAL, output_cost_per_mtok REAL, source TEXT)"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open ledger at {self.path}: {exc}") from exc
        self._closed = False

    def append(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows (a missing column is NULL); a known ``event_id`` is skipped.

        Returns how many rows were new.
        """
        if not rows:
            return 0
        marks = ", ".join("?" for _ in _NAMES)
        values = [tuple(_encode(c, r.get(c)) for c in _NAMES) for r in rows]
        with self._lock:
            try:
                before = self._db.total_changes
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT OR IGNORE INTO calls ({', '.join(_NAMES)}) VALUES ({marks})", values
                )
                self._db.execute("COMMIT")
                return self._db.total_changes - before
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"ledger write failed: {exc}") from exc

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def get(self, decision_id: str) -> dict[str, Any] | None:
        """The latest row for a decision, or None."""
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(_NAMES)} FROM calls WHERE decision_id = ? "
                "ORDER BY ts DESC LIMIT 1",
                (decision_id,),
            )
            row = cur.fetchone()
        return None if row is None else _decode(row)

    def set_feedback(
        self, decision_id: str, quality: float, slugs: Sequence[str] | None, ts: float
    ) -> None:
        """Record late quality for a decision's call."""
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE calls SET quality = ?, quality_applied = ?, "
                    "slugs = COALESCE(?, slugs), feedback_ts = ? "
                    "WHERE rowid = (SELECT rowid FROM calls WHERE decision_id = ? "
                    "ORDER BY ts DESC LIMIT 1)",
                    (quality, quality, _encode("slugs", slugs), ts, decision_id),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"ledger write failed: {exc}") from exc

    def record_prices(self, rows: Iterable[tuple[float, str, float, float, str]]) -> None:
        """Remember a price change (ts, model, input, output, source)."""
        with self._lock:
            self._db.executemany("INSERT INTO prices VALUES (?, ?, ?, ?, ?)", list(rows))

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
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        for name, value in (("org", org), ("task_type", task_type), ("model", model)):
            if value is not None:
                where.append(_FILTERS[name])
                args.append(value)
        sql = f"SELECT {', '.join(_NAMES)} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, rowid"
        offset = 0
        while True:
            with self._lock:
                batch = self._db.execute(
                    sql + " LIMIT ? OFFSET ?", (*args, batch_size, offset)
                ).fetchall()
            for row in batch:
                yield _decode(row)
            if len(batch) < batch_size:
                return
            offset += batch_size

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _encode(col: str, value: Any) -> Any:
    if col in _JSON_COLS:
        return None if value is None else json.dumps(list(value))
    if isinstance(value, bool):
        return int(value)
    return value


def _decode(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_NAMES, row, strict=True))
    for col in _JSON_COLS:
        if out[col] is not None:
            out[col] = json.loads(out[col])
    return out
