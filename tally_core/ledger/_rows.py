"""What a ledger row is, whatever the engine: the columns and their encoding.

Shared by the SQLite and the PostgreSQL ledger, so both store and return the
same row: JSON for the list columns (``tags``, ``slugs``), 0/1 for booleans.

>>> decode_row(encode_row({"event_id": "e", "slugs": ["x"], "holdout": True}))["slugs"]
['x']
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "COLUMNS",
    "ENVELOPE_COLUMNS",
    "JSON_COLS",
    "NAMES",
    "SCHEMA_VERSION",
    "PriceRecord",
    "decode_row",
    "encode_row",
    "encode_value",
    "same_price",
]

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
    # Envelope fields an adapter inferred from the messages, e.g. "task_type,complexity"
    # (names only, never any text); NULL when the caller gave every field.
    ("inferred", "TEXT"),
)
#: The ledger schema this code writes (``tally_ledger_schema`` records the
#: steps applied): 1 the calls, prices and rejected tables; 2 the
#: ``inferred`` column; 3 the hourly roll-ups.
SCHEMA_VERSION = 3
NAMES = tuple(c for c, _ in COLUMNS)
#: The envelope's columns, for rows of calls that had none.
ENVELOPE_COLUMNS = (
    "structure_type", "context_length", "tools_used", "time_sensitive", "quality_floor", "tags",
)

JSON_COLS = ("tags", "slugs")
_JSON_AT = tuple(i for i, c in enumerate(NAMES) if c in JSON_COLS)
_BOOL_AT = tuple(i for i, (_, t) in enumerate(COLUMNS) if t.startswith("INTEGER"))
_ROW = operator.itemgetter(*NAMES)


class PriceRecord(NamedTuple):
    """A model's price from ``ts`` on (USD per million tokens) and where it came from."""

    ts: float
    model: str
    input_cost_per_mtok: float
    output_cost_per_mtok: float
    source: str


def encode_row(row: dict[str, Any]) -> list[Any]:
    """A row's values in column order: lists as JSON, booleans as 0/1."""
    try:
        values = list(_ROW(row))  # a complete row (the recorder's): one C call
    except KeyError:
        get = row.get
        values = [get(c) for c in NAMES]
    for i in _JSON_AT:
        v = values[i]
        if v is not None:
            values[i] = json.dumps(list(v)) if v else "[]"
    for i in _BOOL_AT:
        # PostgreSQL will not put a boolean in an integer column (sqlite3 would).
        if values[i] is True or values[i] is False:
            values[i] = int(values[i])
    return values


def same_price(a: float | None, b: float) -> bool:
    return a is not None and abs(float(a) - b) <= 1e-12 * max(1.0, abs(b))


def encode_value(col: str, value: Any) -> Any:
    if col in JSON_COLS:
        return None if value is None else json.dumps(list(value))
    if isinstance(value, bool):
        return int(value)
    return value


def decode_row(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(NAMES, row, strict=True))
    for col in JSON_COLS:
        if out[col] is not None:
            out[col] = json.loads(out[col])
    return out
