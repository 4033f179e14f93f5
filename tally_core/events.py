"""Telemetry events: a call's outcome and a late feedback, typed and validated.

Everything a caller hands to ``Tally.telemetry`` / ``Tally.feedback`` is
checked here, on the caller's thread, before it is queued: a value that could
not be stored (``input_tokens=2**63``), a model that is not a name
(``model=1``), a decision id of any length, all raise ``InvalidFieldError``
naming the field. So nothing invalid reaches a batch, where one bad event
would otherwise take the others down with it.

Every text field is an identifier of bounded length (model, decision id,
event id, org, task type, cell, error class, slugs); the only free text is
the envelope's ``tags`` (at most 32 labels of 64 characters), documented as
labels that are never prompt text.

Events travel through the spool as JSON records; ``from_record`` validates a
record as completely as the caller's arguments were, so a tampered or
damaged spool file is rejected with the field it got wrong.

>>> ev = call_event(decision_id=None, org="default", task_type="qa-simple", cell="*",
...                 model="gpt-4o-mini", phase=None, confidence=None, holdout=False,
...                 envelope=None, quality=0.9, input_tokens=900)
>>> from_record(to_record(ev)) == ev
True
>>> call_event(decision_id=None, org="default", task_type="qa-simple", cell="*",
...            model="gpt-4o-mini", phase=None, confidence=None, holdout=False,
...            envelope=None, input_tokens=2**63)
Traceback (most recent call last):
...
tally_core.errors.InvalidFieldError: input_tokens: must be an integer between 0 and 1000000000, ...
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from tally_core._brief import brief
from tally_core.envelope import STRUCTURE_TYPES, Envelope, parse_task_type
from tally_core.errors import InvalidFieldError

__all__ = [
    "FIELDS",
    "MAX_TOKENS",
    "CallEvent",
    "Event",
    "FeedbackEvent",
    "ROLLOUT_ACTIONS",
    "RolloutEvent",
    "call_event",
    "check_inferred",
    "check_decision_id",
    "check_model",
    "check_number",
    "check_org",
    "feedback_event",
    "from_record",
    "new_id",
    "rollout_event",
    "to_record",
    "to_row",
]

#: Largest token count one call may report (a billion: far above any context
#: window, far below what SQLite's 64-bit integers hold).
MAX_TOKENS = 1_000_000_000
MAX_LATENCY_MS = 7 * 24 * 3600 * 1000.0
MAX_COST_USD = 1_000_000.0

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$")
# A model name as LiteLLM spells them ("bedrock/anthropic.claude-3:0",
# "ft:gpt-4o:org::id"): no whitespace or control characters, bounded.
_MODEL = re.compile(r"^[^\s\x00-\x1f\x7f]{1,256}$")
_ERROR = re.compile(r"^[A-Za-z0-9_.:/-]{1,120}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_CELL = re.compile(r"^(\*|[a-z]{1,16}\|[a-z-]{1,16}\|(0|1-3|4\+)\|[tn](\|(low|medium|high))?)$")
_CONTEXT = re.compile(r"^(short|medium|long|very-long|[0-9]{1,9})$")
_PHASES = frozenset({"calibrate", "explore", "exploit", "fallback"})


def new_id(prefix: str = "") -> str:
    """An unguessable id: 96 random bits from the kernel, so ids never
    collide across processes, forks or restarts, and knowing one id says
    nothing about another.

    >>> a, b = new_id("d-"), new_id("d-")
    >>> a != b and len(a) == 26 and a.startswith("d-")
    True
    """
    return prefix + os.urandom(12).hex()


def check_number(
    field: str, value: Any, lo: float = 0.0, hi: float = math.inf
) -> float | None:
    """``value`` as a float in ``[lo, hi]``, None for None, else ``InvalidFieldError``.

    >>> check_number("quality", 1, 0.0, 1.0)
    1.0
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidFieldError(field, f"must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        v = math.inf
    if not (math.isfinite(v) and lo <= v <= hi):
        limit = f"between {lo:g} and {hi:g}" if hi != math.inf else f">= {lo:g}"
        raise InvalidFieldError(field, f"must be {limit}, got {brief(value)}")
    return v


def _int(field: str, value: Any, hi: int = MAX_TOKENS) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise InvalidFieldError(
            field, f"must be an integer between 0 and {hi}, got {brief(value)}"
        )
    return int(value)


def _bool(field: str, value: Any, optional: bool = True) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise InvalidFieldError(field, f"must be True or False, got {brief(value)}")
    return value


def _slugs(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidFieldError("slugs", f"must be a list of slugs, got {type(value).__name__}")
    if len(value) > 32:
        raise InvalidFieldError("slugs", f"at most 32 slugs, got {len(value)}")
    out = []
    for s in value:
        if not isinstance(s, str) or not _SLUG.match(s.lower()):
            raise InvalidFieldError(
                "slugs",
                f"each slug must be 1-64 lowercase letters, digits or _.:- "
                f"(like 'hallucination'), got {brief(s)}",
            )
        out.append(s.lower())
    return out


def _ident(field: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidFieldError(field, f"must be {what}, got {brief(value)}")
    return value


def check_model(value: Any, field: str = "model") -> str:
    """A model name: 1-256 characters, no whitespace or control characters."""
    return _ident(field, value, _MODEL, "a model name (1-256 characters, no whitespace)")


def check_decision_id(value: Any, field: str = "decision") -> str:
    """A decision id: 1-128 letters, digits or _.:/@- starting with a letter or digit."""
    return _ident(
        field,
        value,
        _ID,
        "a RouteDecision or its id (1-128 letters, digits or _.:/@-)",
    )


def check_org(value: Any, field: str = "org") -> str:
    """An org id: 1-128 letters, digits or _.:/@- starting with a letter or digit."""
    return _ident(field, value, _ID, "an org id (1-128 letters, digits or _.:/@-)")


def _error(value: Any) -> str | None:
    if value is None:
        return None
    return _ident(
        "error",
        value,
        _ERROR,
        "an error class or code of 1-120 letters, digits or _.:/- "
        "(never a message, which may quote the prompt)",
    )


def _envelope(value: Any) -> dict[str, Any] | None:
    """The envelope's shape as the ledger records it (validated again when
    read from a spool file; from ``route()`` it is already valid)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidFieldError("envelope", f"must be a mapping, got {type(value).__name__}")
    known = {"structure_type", "context_length", "tools_used", "time_sensitive",
             "quality_floor", "tags"}
    extra = [k for k in value if k not in known]
    if extra:
        raise InvalidFieldError("envelope", f"unknown field {brief(extra[0])}")
    st = value.get("structure_type", "prose")
    if st not in STRUCTURE_TYPES:
        raise InvalidFieldError("structure_type", f"must be one of {STRUCTURE_TYPES}")
    ctx = value.get("context_length", "short")
    if not isinstance(ctx, str) or not _CONTEXT.match(ctx):
        raise InvalidFieldError("context_length", f"must be a bucket or count, got {brief(ctx)}")
    tags = value.get("tags", [])
    if not isinstance(tags, (list, tuple)) or len(tags) > 32 or not all(
        isinstance(t, str) and 0 < len(t) <= 64 for t in tags
    ):
        raise InvalidFieldError("tags", "must be at most 32 strings of 1-64 characters")
    return {
        "structure_type": st,
        "context_length": ctx,
        "tools_used": _int("tools_used", value.get("tools_used", 0), 10_000),
        "time_sensitive": _bool("time_sensitive", value.get("time_sensitive", False), False),
        "quality_floor": check_number("quality_floor", value.get("quality_floor"), 0.0, 1.0),
        "tags": list(tags),
    }


@dataclass(slots=True, eq=True)
class CallEvent:
    """One call's outcome, as ``Tally.telemetry`` reported it."""

    event_id: str
    ts: float
    decision_id: str | None
    org: str
    task_type: str
    cell: str
    model: str
    phase: str | None
    confidence: float | None
    holdout: bool
    envelope: dict[str, Any] | None
    quality: float | None
    success: bool | None
    slugs: list[str] | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float | None
    cost_usd: float | None
    error: str | None
    #: Routed by this process (its in-flight count drops once it is applied).
    local: bool = False
    #: Envelope fields an adapter inferred from the messages (names only).
    inferred: tuple[str, ...] = ()

    kind = "call"


@dataclass(slots=True, eq=True)
class FeedbackEvent:
    """Late quality for a call, joined to it by decision id."""

    event_id: str
    ts: float
    decision_id: str
    org: str
    task_type: str
    cell: str
    model: str
    quality: float
    slugs: list[str] | None

    kind = "feedback"


@dataclass(slots=True, eq=True)
class RolloutEvent:
    """A rollout moving on (``tally_core.rollout``): advanced a step, done, or
    rolled back, with the figures it was judged on. Written to the ledger's
    ``rollouts`` table; never folded into learned state."""

    event_id: str
    ts: float
    model: str
    org: str
    task_type: str
    action: str  # one of ROLLOUT_ACTIONS
    step: int  # the step judged, 0-based
    share: float  # that step's share of the calls
    calls: int  # the candidate's graded calls at the step
    quality: float | None  # the candidate's mean quality at the step
    incumbent_quality: float | None  # the incumbents' mean over the same span
    reason: str

    kind = "rollout"


Event = CallEvent | FeedbackEvent | RolloutEvent

ROLLOUT_ACTIONS = frozenset({"advanced", "done", "rolled-back"})
_REASON = re.compile(r"^[^\x00-\x1f\x7f]{1,300}$")


_INFERABLE = frozenset(Envelope.model_fields)


def check_inferred(value: Any) -> tuple[str, ...]:
    """The names of inferred envelope fields: envelope field names only
    (never any text), each once, in the order given.

    >>> check_inferred(["task_type", "complexity"]), check_inferred(None)
    (('task_type', 'complexity'), ())
    """
    if value is None or value == ():
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) > 16:
        raise InvalidFieldError("inferred", f"must be a list of envelope field names, "
                                f"got {brief(value)}")
    bad = [v for v in value if not isinstance(v, str) or v not in _INFERABLE]
    if bad:
        raise InvalidFieldError("inferred", f"not an envelope field: {brief(bad[0])}")
    return tuple(dict.fromkeys(value))


def _common(
    decision_id: Any, org: Any, task_type: Any, cell: Any, model: Any
) -> tuple[str | None, str, str, str, str]:
    did = None if decision_id is None else check_decision_id(decision_id)
    o = check_org(org)
    tt = parse_task_type(task_type)
    if not isinstance(cell, str) or not _CELL.match(cell):
        raise InvalidFieldError("cell", f"must be a context cell key, got {brief(cell)}")
    return did, o, tt, cell, check_model(model)


def call_event(
    *,
    decision_id: Any,
    org: Any,
    task_type: Any,
    cell: Any,
    model: Any,
    phase: Any,
    confidence: Any,
    holdout: Any,
    envelope: Any,
    quality: Any = None,
    success: Any = None,
    slugs: Any = None,
    input_tokens: Any = None,
    output_tokens: Any = None,
    latency_ms: Any = None,
    cost_usd: Any = None,
    error: Any = None,
    local: bool = False,
    event_id: Any = None,
    ts: Any = None,
    routed: bool = False,
    inferred: Any = None,
) -> CallEvent:
    """A validated ``CallEvent``, or ``InvalidFieldError`` naming the bad field.

    ``routed=True`` says the decision's fields (id, org, task type, cell,
    model, phase, confidence, holdout, envelope) come from a ``RouteDecision``
    this process made, already valid: only the caller's outcome fields are
    checked then (the common case, on the caller's thread, kept cheap).
    """
    q = check_number("quality", quality, 0.0, 1.0)
    ok = _bool("success", success)
    sl = _slugs(slugs)
    it = _int("input_tokens", input_tokens)
    ot = _int("output_tokens", output_tokens)
    lat = check_number("latency_ms", latency_ms, 0.0, MAX_LATENCY_MS)
    cost = check_number("cost_usd", cost_usd, 0.0, MAX_COST_USD)
    err = _error(error)
    if not routed:
        decision_id, org, task_type, cell, model = _common(
            decision_id, org, task_type, cell, model
        )
        if phase is not None and phase not in _PHASES:
            raise InvalidFieldError(
                "phase", f"must be one of {sorted(_PHASES)}, got {brief(phase)}"
            )
        confidence = check_number("confidence", confidence, 0.0, 1.0)
        holdout = bool(_bool("holdout", holdout, False))
        envelope = _envelope(envelope)
    return CallEvent(
        event_id=new_id("e-") if event_id is None else check_decision_id(event_id, "event_id"),
        ts=time.time() if ts is None else _ts(ts),
        decision_id=decision_id,
        org=org,
        task_type=task_type,
        cell=cell,
        model=model,
        phase=phase,
        confidence=confidence,
        holdout=holdout,
        envelope=envelope,
        quality=q,
        success=ok,
        slugs=sl,
        input_tokens=it,
        output_tokens=ot,
        latency_ms=lat,
        cost_usd=cost,
        error=err,
        local=local is True,
        inferred=check_inferred(inferred),
    )


def feedback_event(
    *,
    decision_id: Any,
    org: Any,
    task_type: Any,
    cell: Any,
    model: Any,
    quality: Any,
    slugs: Any = None,
    event_id: Any = None,
    ts: Any = None,
) -> FeedbackEvent:
    """A validated ``FeedbackEvent``, or ``InvalidFieldError`` naming the bad field."""
    if isinstance(quality, bool):
        quality = 1.0 if quality else 0.0
    q = check_number("quality", quality, 0.0, 1.0)
    if q is None:
        raise InvalidFieldError("quality", "is required")
    sl = _slugs(slugs)
    if decision_id is None:
        raise InvalidFieldError("decision", "is required")
    did, o, tt, c, m = _common(decision_id, org, task_type, cell, model)
    assert did is not None
    return FeedbackEvent(
        event_id=new_id("e-") if event_id is None else check_decision_id(event_id, "event_id"),
        ts=time.time() if ts is None else _ts(ts),
        decision_id=did,
        org=o,
        task_type=tt,
        cell=c,
        model=m,
        quality=q,
        slugs=sl,
    )


def rollout_event(
    *,
    model: Any,
    org: Any,
    task_type: Any,
    action: Any,
    step: Any,
    share: Any,
    calls: Any,
    quality: Any,
    incumbent_quality: Any,
    reason: Any,
    event_id: Any = None,
    ts: Any = None,
) -> RolloutEvent:
    """A validated ``RolloutEvent``, or ``InvalidFieldError`` naming the bad field.

    >>> rollout_event(model="m", org="default", task_type="qa", action="rolled-back", step=0,
    ...               share=0.05, calls=40, quality=0.81, incumbent_quality=0.93,
    ...               reason="rolled back at 5%").task_type
    'qa-simple'
    >>> rollout_event(model="m", org="default", task_type="qa", action="paused", step=0,
    ...               share=0.05, calls=40, quality=None, incumbent_quality=None, reason="x")
    Traceback (most recent call last):
    ...
    tally_core.errors.InvalidFieldError: action: must be one of ['advanced', 'done', ...
    """
    if action not in ROLLOUT_ACTIONS:
        raise InvalidFieldError(
            "action", f"must be one of {sorted(ROLLOUT_ACTIONS)}, got {brief(action)}")
    st = _int("step", step, 1000)
    n = _int("calls", calls)
    if st is None or n is None:
        raise InvalidFieldError("step" if st is None else "calls", "is required")
    sh = check_number("share", share, 0.0, 1.0)
    if sh is None:
        raise InvalidFieldError("share", "is required")
    return RolloutEvent(
        event_id=new_id("e-") if event_id is None else check_decision_id(event_id, "event_id"),
        ts=time.time() if ts is None else _ts(ts),
        model=check_model(model),
        org=check_org(org),
        task_type=parse_task_type(task_type),
        action=str(action),
        step=st,
        share=sh,
        calls=n,
        quality=check_number("quality", quality, 0.0, 1.0),
        incumbent_quality=check_number("incumbent_quality", incumbent_quality, 0.0, 1.0),
        reason=_ident("reason", reason, _REASON, "1-300 characters of text"),
    )


def _ts(value: Any) -> float:
    v = check_number("ts", value, 0.0, 1e11)
    assert v is not None
    return v


_CALL_FIELDS = tuple(f.name for f in fields(CallEvent))
_FEEDBACK_FIELDS = tuple(f.name for f in fields(FeedbackEvent))
_ROLLOUT_FIELDS = tuple(f.name for f in fields(RolloutEvent))
#: Field names per kind, in the order ``to_row`` writes them.
FIELDS: dict[str, tuple[str, ...]] = {
    "call": _CALL_FIELDS, "feedback": _FEEDBACK_FIELDS, "rollout": _ROLLOUT_FIELDS}
_GET = {k: attrgetter(*v) for k, v in FIELDS.items()}


def to_row(event: Event) -> list[Any]:
    """The event as ``[kind, *values]`` in ``FIELDS[kind]`` order: the
    spool's compact form (a third of the cost of a keyed record to write).

    >>> ev = feedback_event(decision_id="d1", org="o", task_type="qa", cell="*",
    ...                     model="m", quality=1.0, event_id="e1", ts=1.0)
    >>> from_record(dict(zip(FIELDS["feedback"], to_row(ev)[1:]), kind="feedback")) == ev
    True
    """
    return [event.kind, *_GET[event.kind](event)]


def to_record(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict (for the spool)."""
    names = FIELDS[event.kind]
    out: dict[str, Any] = {"kind": event.kind}
    for n in names:
        out[n] = getattr(event, n)
    return out


def from_record(record: Any) -> Event:
    """An event from a spool record, validated as completely as a caller's
    arguments; ``InvalidFieldError`` names what is wrong."""
    if not isinstance(record, Mapping):
        raise InvalidFieldError("event", f"must be a JSON object, got {type(record).__name__}")
    kind = record.get("kind")
    names = FIELDS.get(kind)  # type: ignore[arg-type]
    if names is None:
        raise InvalidFieldError(
            "kind", f"must be 'call', 'feedback' or 'rollout', got {brief(kind)}")
    extra = [k for k in record if k != "kind" and k not in names]
    if extra:
        raise InvalidFieldError("event", f"unknown field {brief(extra[0])}")
    args = {n: record.get(n) for n in names}
    if kind == "rollout":
        for required in ("event_id", "ts"):
            if args.get(required) is None:
                raise InvalidFieldError(required, "is required")
        return rollout_event(**args)
    for required in ("event_id", "ts", "org", "task_type", "cell", "model"):
        if args.get(required) is None:
            raise InvalidFieldError(required, "is required")
    if kind == "call":
        return call_event(**args)  # type: ignore[arg-type]
    return feedback_event(**args)

