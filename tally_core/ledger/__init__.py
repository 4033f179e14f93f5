"""The ledger: the call log, on SQLite (embedded, the default) or PostgreSQL (a fleet).

``Ledger`` is the SQLite ledger and the interface every reader (reports,
savings, export, the dashboard) is written against; ``PostgresLedger`` is a
``Ledger`` whose rows live in a PostgreSQL database that every replica
writes. Both keep hourly roll-ups on append (``_rollups``) for reports at
scale; readers take a ``LedgerQuery``. ``open_ledger`` picks one from where the ledger lives.

>>> open_ledger(":memory:").count()
0
"""

from __future__ import annotations

import os

from tally_core.ledger._rows import COLUMNS, ENVELOPE_COLUMNS, SCHEMA_VERSION, PriceRecord
from tally_core.ledger.query import LedgerQuery
from tally_core.ledger.sqlite import Ledger

__all__ = [
    "COLUMNS",
    "ENVELOPE_COLUMNS",
    "SCHEMA_VERSION",
    "Ledger",
    "LedgerQuery",
    "PriceRecord",
    "copy_ledger",
    "is_postgres_url",
    "open_ledger",
]

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(where: object) -> bool:
    """Whether ``where`` names a PostgreSQL database rather than a file.

    >>> is_postgres_url("postgresql://tally@db:5432/tally"), is_postgres_url("/tmp/l.sqlite3")
    (True, False)
    """
    return isinstance(where, str) and where.startswith(_PG_SCHEMES)


def open_ledger(where: str | os.PathLike[str], *, readonly: bool = False) -> Ledger:
    """The ledger at ``where``: a ``postgresql://`` URL, a SQLite path or ``":memory:"``."""
    if is_postgres_url(where):
        from tally_core.ledger.postgres import PostgresLedger

        return PostgresLedger(str(where), readonly=readonly)
    return Ledger(where, readonly=readonly)


def copy_ledger(src: Ledger, dst: Ledger, *, batch_size: int = 1024) -> int:
    """Copy every call, price record, rejected event and rollout transition of
    ``src`` into ``dst``; returns the calls that were new there.

    The upgrade path from one replica's SQLite ledger to a fleet's PostgreSQL
    one: streamed (any size fits), and safe to run again or for several
    replicas into one ledger (calls are skipped by event id, price records
    and rejected events already there are not copied twice).

    >>> a, b = Ledger(":memory:"), Ledger(":memory:")
    >>> _ = a.append([{"event_id": "e1", "ts": 1.0, "org": "o", "task_type": "t", "model": "m"}])
    >>> copy_ledger(a, b), copy_ledger(a, b), b.count()
    (1, 0, 1)
    """
    new, batch = 0, []
    for row in src.rows(batch_size=batch_size):
        batch.append(row)
        if len(batch) >= batch_size:
            new += dst.append(batch)
            batch = []
    new += dst.append(batch)
    have = set(dst.prices())
    dst.record_prices(
        (p.ts, p.model, p.input_cost_per_mtok, p.output_cost_per_mtok, p.source)
        for p in src.prices()
        if p not in have
    )
    seen = {tuple(r.values()) for r in dst.rejected()}
    dst.record_rejected(
        (r["ts"], r["event_id"], r["decision_id"], r["field"], r["reason"])
        for r in src.rejected()
        if tuple(r.values()) not in seen
    )
    dst.record_rollouts(src.rollouts())  # skipped by event id when already there
    return new
