"""Where Tally keeps its files: the Tally home, and what lives in a store directory.

A store directory (``$TALLY_HOME``, ``~/.tally`` or the ``store=`` a caller
names) holds one replica's files; this module is the only place their names
are spelled, so every reader and writer agrees on them:

- ``ledger.sqlite3``: the call log (unless the ledger is a PostgreSQL URL);
- ``state/``: the learned state of a ``DiskStore`` (a diskcache directory);
- ``spool/``: telemetry batches the state store or ledger could not take yet;
- ``model_prices.json``: the price map ``tally pricing --refresh`` saved;
- ``rollouts.json``: where gradual rollouts lived before the state store kept
  them; imported once into the store, then renamed ``rollouts.json.imported``.

>>> from pathlib import Path
>>> d = StoreDir("/srv/tally")
>>> d.ledger == Path("/srv/tally/ledger.sqlite3"), d.spool.name, d.state.name
(True, 'spool', 'state')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "LEDGER",
    "PRICE_MAP",
    "ROLLOUTS",
    "SPOOL",
    "STATE",
    "StoreDir",
    "default_home",
]

#: The environment variable naming the Tally home.
HOME_ENV = "TALLY_HOME"
#: The Tally home when ``$TALLY_HOME`` is unset.
DEFAULT_HOME = "~/.tally"

# The names inside a store directory. Existing stores on disk use them: a
# change here orphans every store written before it.
LEDGER = "ledger.sqlite3"
STATE = "state"
SPOOL = "spool"
PRICE_MAP = "model_prices.json"
ROLLOUTS = "rollouts.json"


def default_home() -> str:
    """``$TALLY_HOME`` or ``~/.tally``, with ``~`` expanded."""
    return str(Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser())


@dataclass(frozen=True)
class StoreDir:
    """The paths of one store directory (``None``: the Tally home).

    Nothing is created or checked here: each owner creates what it writes.
    """

    root: Path

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        where = default_home() if directory is None else directory
        object.__setattr__(self, "root", Path(where).expanduser())

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def spool(self) -> Path:
        return self.root / SPOOL

    @property
    def price_map(self) -> Path:
        return self.root / PRICE_MAP

    @property
    def rollouts(self) -> Path:
        return self.root / ROLLOUTS
