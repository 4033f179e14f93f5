"""Errors raised by Tally.

The hierarchy::

    TallyError
    ├── InvalidFieldError        (also a ValueError): bad input, names the field
    │   └── UnknownDecisionError: telemetry/feedback for an id Tally never saw
    ├── UnknownModelError        (also a ValueError): a model with no known prices
    ├── StoreError               the state store or ledger could not be reached
    └── ClosedError              the Tally instance was closed

Every error is raised before any state is touched, so a rejected call leaves
the bandit, the queue and the ledger exactly as they were.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "InvalidFieldError",
    "StoreError",
    "TallyError",
    "UnknownDecisionError",
    "UnknownModelError",
]


class TallyError(Exception):
    """Base class for every error Tally raises."""


class InvalidFieldError(TallyError, ValueError):
    """A value Tally was given is not allowed; ``field`` names which one.

    >>> str(InvalidFieldError("quality", "must be between 0 and 1, got 1.5"))
    'quality: must be between 0 and 1, got 1.5'
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)  # all args, so it unpickles
        self.field = field

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


class UnknownDecisionError(InvalidFieldError):
    """Telemetry or feedback named a decision id Tally has no record of."""


class UnknownModelError(TallyError, ValueError):
    """A model is not in the price map and no prices were given for it."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(model, message)
        self.model = model

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


class StoreError(TallyError):
    """The state store or the ledger failed; telemetry is retried and spooled."""


class ClosedError(TallyError):
    """The Tally instance was closed; create a new one."""
