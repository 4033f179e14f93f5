"""The ledger: the call log, on SQLite (embedded, the default) or PostgreSQL (a fleet).

``Ledger`` is the SQLite ledger and the interface every reader (reports,
savings, export, the dashboard) is written against; ``PostgresLedger`` is a
``Ledger`` whose rows live in a PostgreSQL database that every replica
writes. ``open_ledger`` picks one from where the ledger lives.

>>> open_ledger(":memory:").count()
0
"""

from __future__ import annotations

import os

from tally_core.ledger._rows import COLUMNS, ENVELOPE_COLUMNS, PriceRecord
from tally_core.ledger.sqlite import Ledger

__all__ = ["COLUMNS", "ENVELOPE_COLUMNS", "Ledger", "PriceRecord", "is_postgres_url", "open_ledger"]

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
