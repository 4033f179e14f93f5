"""Tally: route each LLM call to the cheapest model that is good enough.

>>> from tally_core import Tally, Envelope
>>> tally = Tally(["gpt-4o-mini", "gpt-4o"], fallback="gpt-4o", store=":memory:", seed=0)
>>> tally.route(Envelope(task_type="qa-simple", quality_floor=0.8)).model
'gpt-4o-mini'
>>> tally.close()
"""

from __future__ import annotations

from tally_core.catalog import Catalog, ModelSpec
from tally_core.decision import Dropped, RouteDecision
from tally_core.envelope import KNOWN_TASK_TYPES, STRUCTURE_TYPES, Envelope
from tally_core.errors import (
    ClosedError,
    InvalidFieldError,
    StoreError,
    TallyError,
    UnknownDecisionError,
    UnknownModelError,
)
from tally_core.learning import LearnParams
from tally_core.ledger import Ledger
from tally_core.policy import CostOptimised, FloorBandit, Policy, StaticThreshold
from tally_core.router import NoCandidateError, Tally, default_home
from tally_core.stores import DiskStore, MemoryStore, RedisStore, StateStore

__version__ = "0.1.0"

__all__ = [
    "KNOWN_TASK_TYPES",
    "STRUCTURE_TYPES",
    "Catalog",
    "ClosedError",
    "DiskStore",
    "Dropped",
    "Envelope",
    "CostOptimised",
    "FloorBandit",
    "InvalidFieldError",
    "LearnParams",
    "Ledger",
    "MemoryStore",
    "RedisStore",
    "ModelSpec",
    "NoCandidateError",
    "Policy",
    "RouteDecision",
    "StateStore",
    "StaticThreshold",
    "StoreError",
    "Tally",
    "TallyError",
    "UnknownDecisionError",
    "UnknownModelError",
    "default_home",
]
