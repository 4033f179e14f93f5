"""The recorder: a batch of telemetry events -> state updates and ledger rows.

This is the pipeline's exporter (OpenTelemetry's word): the telemetry queue
hands it batches and never learns what is inside them; it knows nothing of
routing. It turns each event into an ``Update`` for the state store and a
row for the ledger, commits the updates in one store transaction, writes the
rows with the clocks the store says each outcome landed at, and tells its
listeners (the router's snapshot) what was committed, so nobody reads the
store again after a batch.

One event that cannot be recorded is rejected on its own: recorded in the
ledger's ``rejected`` table, counted, logged once per kind of fault. It
never takes its batch with it. A store or ledger that cannot be reached
raises ``StoreError`` for the whole batch, which the queue keeps and
retries, in order.

>>> from tally_core.catalog import Catalog, ModelSpec
>>> from tally_core.events import call_event
>>> from tally_core.ledger import ENVELOPE_COLUMNS, Ledger
>>> from tally_core.stores.memory import MemoryStore
>>> spec = ModelSpec(name="m", input_cost_per_mtok=1.0, output_cost_per_mtok=2.0)
>>> rec = Recorder(MemoryStore(), Ledger(":memory:"), Catalog([spec]))
>>> ev = call_event(decision_id="d1", org="default", task_type="qa", cell="*", model="m",
...                 phase="calibrate", confidence=0.5, holdout=False, envelope=None,
...                 quality=0.9, input_tokens=1000, output_tokens=500)
>>> out = rec.record("b1", [ev])
>>> out.applied, out.rejected, rec.ledger.get("d1")["clock"], rec.ledger.get("d1")["cost_usd"]
(1, 0, 1.0, 0.002)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tally_core._brief import cut
from tally_core.catalog import Catalog, ModelSpec
from tally_core.errors import InvalidFieldError, StoreError
from tally_core.events import CallEvent, Event, FeedbackEvent, RolloutEvent, from_record
from tally_core.learning import TASK_CELL, LearnParams, Update, floor_key
from tally_core.ledger import ENVELOPE_COLUMNS, Ledger
from tally_core.stores.base import Committed, StateStore, update_clocks

__all__ = ["Recorded", "Recorder"]

log = logging.getLogger("tally.recorder")

_NO_ENVELOPE: dict[str, Any] = dict.fromkeys(ENVELOPE_COLUMNS)


@dataclass(frozen=True)
class Recorded:
    """What one batch became.

    ``applied`` events were recorded (state and ledger), ``rejected`` were
    not (each named in the ledger's ``rejected`` table); ``committed`` is the
    store's answer; ``calls`` the call events recorded, in order; ``rows``
    the ledger rows written.
    """

    applied: int
    rejected: int
    committed: Committed
    calls: tuple[CallEvent, ...] = field(default=())
    #: The ledger rows written (what an exporter, like the OTel one, sends on).
    rows: tuple[dict[str, Any], ...] = field(default=())


Listener = Callable[[Recorded], None]


def outcome(ev: CallEvent) -> tuple[float | None, bool, bool | None]:
    """(quality to learn, errored, success to record) for a call event.

    ``success`` alone counts as 1 or 0; ``success=False`` with an ``error``
    is an availability failure (the provider was down), not a quality signal;
    a call reported with no outcome at all (a cancelled stream) stays unknown.

    >>> from tally_core.events import call_event
    >>> e = call_event(decision_id=None, org="o", task_type="qa", cell="*", model="m",
    ...                phase=None, confidence=None, holdout=False, envelope=None,
    ...                success=False, error="RateLimitError")
    >>> outcome(e)
    (None, True, False)
    """
    q, success, error = ev.quality, ev.success, ev.error
    errored = False
    if q is None:
        if success is True:
            q = 1.0
        elif success is False:
            if error:
                errored = True
            else:
                q = 0.0
    if success is None and (error is not None or q is not None):
        success = error is None and not errored
    return q, errored, success


class Recorder:
    """Records batches of events into a state store and a ledger.

    Parameters
    ----------
    store, ledger
        Where learned state and the call log go.
    catalog
        Prices, for the cost of calls that did not report one.
    learn
        How evidence is weighed (the same for every store).
    """

    def __init__(
        self,
        store: StateStore,
        ledger: Ledger,
        catalog: Catalog,
        learn: LearnParams | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.catalog = catalog
        self.learn = learn or LearnParams()
        self._listeners: list[Listener] = []
        self._logged: set[str] = set()
        self._log_lock = threading.Lock()
        self.rejected_total = 0

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(recorded)`` after each batch is committed."""
        self._listeners.append(listener)

    # -- the exporter interface the queue uses --------------------------------

    def record(self, batch_id: str, events: Sequence[Event | dict[str, Any]]) -> Recorded:
        """Record one batch; ``StoreError`` if the store or the ledger is down
        (nothing is half-done that a retry with the same id would double)."""
        updates: list[Update] = []
        rows: list[dict[str, Any]] = []
        row_update: list[int] = []  # index into updates of each row's outcome
        calls: list[CallEvent] = []
        by_decision: dict[str, int] = {}  # decision id -> index into rows, this batch
        feedback: list[tuple[str, float, list[str] | None, float]] = []
        rejected: list[tuple[Any, InvalidFieldError]] = []
        rollouts: list[RolloutEvent] = []
        for raw in events:
            try:
                ev = (raw if isinstance(raw, (CallEvent, FeedbackEvent, RolloutEvent))
                      else from_record(raw))
                if isinstance(ev, RolloutEvent):
                    rollouts.append(ev)  # the ledger's, not learned state's
                elif isinstance(ev, CallEvent):
                    u, row = self._call(ev)
                    if ev.decision_id:
                        by_decision[ev.decision_id] = len(rows)
                    row_update.append(len(updates))
                    updates.append(u)
                    rows.append(row)
                    calls.append(ev)
                else:
                    self._feedback(ev, updates, rows, row_update, by_decision, feedback)
            except InvalidFieldError as exc:
                rejected.append((raw, exc))
            except Exception as exc:  # a fault in one event stays with that event
                rejected.append((raw, InvalidFieldError("event", f"{type(exc).__name__}: {exc}")))
        committed = self.store.apply(batch_id, updates, self.learn)
        if not isinstance(committed, Committed):
            # A store written against the older interface returns a bool: its
            # clocks are unknown, and the snapshot catches up by refreshing.
            committed = Committed(bool(committed))
        clocks = update_clocks(updates, committed.starts)
        for row, ui in zip(rows, row_update, strict=True):
            row["clock"] = clocks[ui]
        _, bad_rows = self.ledger.write(rows)
        for i, reason in bad_rows:
            # Only a bug gets here (events are bounded before they are queued).
            rejected.append((calls[i], InvalidFieldError("ledger", reason)))
        for did, q, sl, ts in feedback:
            self.ledger.set_feedback(did, q, sl, ts)
        if rollouts:
            self.ledger.record_rollouts(rollouts)
        if rejected:
            self.reject(rejected)
        bad = {i for i, _ in bad_rows}
        written = tuple(row for i, row in enumerate(rows) if i not in bad)
        out = Recorded(len(events) - len(rejected), len(rejected), committed, tuple(calls),
                       written)
        for listener in self._listeners:
            try:
                listener(out)
            except Exception:  # a listener's bug must not fail a committed batch
                log.exception("tally recorder listener failed")
        return out

    def reject(self, rejected: Sequence[tuple[Any, BaseException]]) -> None:
        """Record events that cannot be recorded: the ledger's ``rejected``
        table, a count, one log line per kind of fault."""
        self.rejected_total += len(rejected)
        rows = []
        for raw, exc in rejected:
            field_name = exc.field if isinstance(exc, InvalidFieldError) else "event"
            reason = str(exc)
            rows.append((_get(raw, "ts"), _get(raw, "event_id"), _get(raw, "decision_id"),
                         field_name, reason))
            with self._log_lock:
                first = field_name not in self._logged and len(self._logged) < 1000
                self._logged.add(field_name)
            if first:
                log.warning(
                    "tally telemetry rejected an event (%s); later ones like it are only "
                    "counted (telemetry_counts['rejected']) and listed by ledger.rejected()",
                    cut(reason, 200),
                )
        try:
            self.ledger.record_rejected(rows)
        except StoreError as exc:
            log.warning("tally could not record %d rejected event(s): %s", len(rows), exc)

    # -- one event -----------------------------------------------------------

    def _spec(self, model: str) -> ModelSpec | None:
        if model in self.catalog:
            return self.catalog[model]
        found = self.catalog.lookup(model)
        return ModelSpec(name=model, **found) if found else None

    def _call(self, ev: CallEvent) -> tuple[Update, dict[str, Any]]:
        q, errored, success = outcome(ev)
        spec = self._spec(ev.model)
        cost = ev.cost_usd
        if cost is None:
            cost = (
                spec.estimate_cost_usd(ev.input_tokens or 0, ev.output_tokens or 0)
                if spec is not None
                else 0.0
            )
        floor = (ev.envelope or {}).get("quality_floor")
        u = Update(
            ev.org, ev.task_type, ev.cell, ev.model, q, errored,
            ev.latency_ms, ev.output_tokens, cost,
            # What the policy learns from besides quality: the call's real input size
            # (realised cost per call), whether it was a learning call, at which floor.
            input_tokens=ev.input_tokens,
            phase=None if ev.holdout else ev.phase,
            floor=floor_key(floor if isinstance(floor, (int, float)) else None)
            if ev.envelope else None,
        )
        row = {
            "event_id": ev.event_id,
            "decision_id": ev.decision_id,
            "ts": ev.ts,
            "org": ev.org,
            "task_type": ev.task_type,
            "cell": ev.cell,
            **(ev.envelope or _NO_ENVELOPE),
            "model": ev.model,
            "phase": ev.phase,
            "confidence": ev.confidence,
            "holdout": ev.holdout,
            "input_tokens": ev.input_tokens,
            "output_tokens": ev.output_tokens,
            "latency_ms": ev.latency_ms,
            "cost_usd": cost,
            "input_cost_per_mtok": spec.input_cost_per_mtok if spec else None,
            "output_cost_per_mtok": spec.output_cost_per_mtok if spec else None,
            "success": success,
            "quality": ev.quality if ev.quality is not None else q,
            "slugs": ev.slugs,
            "error": ev.error,
            "quality_applied": q,
            "clock": None,
            "feedback_ts": None,
            "inferred": ",".join(ev.inferred) if ev.inferred else None,
        }
        return u, row

    def _feedback(
        self,
        ev: FeedbackEvent,
        updates: list[Update],
        rows: list[dict[str, Any]],
        row_update: list[int],
        by_decision: dict[str, int],
        feedback: list[tuple[str, float, list[str] | None, float]],
    ) -> None:
        q = ev.quality
        at = by_decision.get(ev.decision_id)
        if at is not None:
            # The call is in this batch, not yet committed: learn the final
            # quality in its place (the same as replacing it a moment later).
            row = rows[at]
            _same_org(ev, row)
            ui = row_update[at]
            updates[ui] = dataclasses.replace(updates[ui], quality=q)
            row.update(quality=q, quality_applied=q, feedback_ts=ev.ts)
            if ev.slugs is not None:
                row["slugs"] = ev.slugs
            return
        orig = self.ledger.get(ev.decision_id)
        if orig is not None:
            _same_org(ev, orig)
            prev = orig.get("quality_applied")
            updates.append(
                Update(
                    orig["org"], orig["task_type"], orig["cell"] or TASK_CELL, orig["model"],
                    q, False, None, None, 0.0,
                    replaces=prev, at=orig.get("clock"), outcome_only=prev is None,
                )
            )
            feedback.append((ev.decision_id, q, ev.slugs, ev.ts))
            return
        # No call on record (it was never reported here): the quality counts
        # on its own, as evidence, not as another call.
        updates.append(
            Update(ev.org, ev.task_type, ev.cell, ev.model, q, False, None, None, 0.0,
                   outcome_only=True)
        )


def _same_org(ev: FeedbackEvent, row: dict[str, Any]) -> None:
    # Feedback is bound to the org that made the decision: another tenant's
    # feedback must never move this tenant's learned quality.
    if row["org"] != ev.org:
        raise InvalidFieldError(
            "org", f"decision {ev.decision_id} belongs to another org, not {ev.org!r}"
        )


def _get(raw: Any, name: str) -> Any:
    v = raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)
    if name == "ts":
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return v if isinstance(v, str) and len(v) <= 128 else None

