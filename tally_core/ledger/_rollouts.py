"""The ledger's ``rollouts`` table: one row per rollout transition (a migration step).

Additive: ``CREATE TABLE IF NOT EXISTS`` on open, so a ledger from before it
gains the table on first open by this version and an older Tally reading a
newer ledger never sees it. Rows are written from ``RolloutEvent`` s by the
recorder; the event id is unique, so a replayed batch adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ROLLOUT_COLUMNS", "ROLLOUT_NAMES", "rollout_ddl", "rollout_filters", "rollout_values"]

#: (column, SQLite type), in table order.
ROLLOUT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "TEXT"),
    ("ts", "REAL"),
    ("model", "TEXT"),
    ("org", "TEXT"),
    ("task_type", "TEXT"),
    ("action", "TEXT"),
    ("step", "INTEGER"),
    ("share", "REAL"),
    ("calls", "INTEGER"),
    ("quality", "REAL"),
    ("incumbent_quality", "REAL"),
    ("reason", "TEXT"),
)
ROLLOUT_NAMES = tuple(c for c, _ in ROLLOUT_COLUMNS)


def rollout_ddl(types: Mapping[str, str] | None = None) -> list[str]:
    """The statements that add the table (``types`` maps SQLite types to the database's)."""
    t = types or {}
    cols = ", ".join(f"{c} {t.get(ty, ty)}" for c, ty in ROLLOUT_COLUMNS)
    return [
        f"CREATE TABLE IF NOT EXISTS rollouts ({cols})",
        "CREATE UNIQUE INDEX IF NOT EXISTS rollouts_event ON rollouts(event_id)",
        "CREATE INDEX IF NOT EXISTS rollouts_model ON rollouts(model, ts)",
    ]


def rollout_values(events: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Row tuples, in column order, from ``RolloutEvent`` s (or mappings of their fields)."""
    out = []
    for ev in events:
        get = ev.get if isinstance(ev, Mapping) else lambda n, _e=ev: getattr(_e, n)
        out.append(tuple(get(n) for n in ROLLOUT_NAMES))
    return out


def rollout_filters(
    model: str | None, org: str | None, task_type: str | None, mark: str
) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (or "") and its parameters, with ``mark`` as the placeholder."""
    clauses, params = [], []
    for col, value in (("model", model), ("org", org), ("task_type", task_type)):
        if value is not None:
            clauses.append(f"{col} = {mark}")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
