"""Fuzzing the caller-facing boundary with hypothesis: envelopes, telemetry,
feedback. Bad input raises ``InvalidFieldError`` and nothing else; what is
accepted reaches the ledger and the learned state; the envelope cache never
accepts what ``Envelope()`` rejects.

``TALLY_CHAOS_LONG=1`` runs many more examples.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally_core import Envelope, InvalidFieldError, Tally
from tally_core.envelope import coerce_envelope

LONG = os.environ.get("TALLY_CHAOS_LONG") == "1"
FUZZ = settings(
    max_examples=3000 if LONG else 300,
    deadline=None,
    derandomize=not LONG,  # CI runs the same examples every time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
POOL = ["gpt-4o-mini", "gpt-4o"]
FIELDS = list(Envelope.model_fields)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["qa", "prose", "json", "long", "very_long", "default", "gpt-4o", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.frozensets(st.text(max_size=5), max_size=3),
    ),
    max_leaves=12,
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12), st.none(), st.integers())
envelopes = st.dictionaries(keys, values, max_size=6).map(
    lambda d: {"task_type": "qa", **d} if "task_type" not in d else d
)


def _deep(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = [v]
    return v


@FUZZ
@given(envelopes)
def test_envelopes_raise_only_invalid_field_error(data: dict[Any, Any]) -> None:
    try:
        env = coerce_envelope(data)
    except InvalidFieldError as exc:
        assert len(str(exc)) < 1000
        return
    assert isinstance(env, Envelope)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({None: 1, "task_type": "qa"}, "envelope"),
        ({"task_type": "qa", "tags": _deep(3000)}, "tags"),
        ({"task_type": "qa", "allowed_models": _deep(50)}, "allowed_models"),
        ({"task_type": "x" * 1_000_000}, "task_type"),
        ({"task_type": "qa", "org": "y" * 1_000_000}, "org"),
        ({"task_type": "qa", "tags": ["z" * 1_000_000]}, "tags"),
    ],
)
def test_hostile_envelopes_get_a_short_clear_error(data: dict[Any, Any], field: str) -> None:
    with pytest.raises(InvalidFieldError) as err:
        coerce_envelope(data)
    assert err.value.field == field
    assert len(str(err.value)) < 1000  # never the 1 MB value echoed back


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=4), st.data())
def test_the_envelope_cache_never_accepts_what_envelope_rejects(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    # Case: after route({"tools_used": 1}), route({"tools_used": True}) was
    # accepted (True == 1 hash alike). Whether a value is accepted must not
    # depend on what came before.
    t = _tally()
    first = {"task_type": "qa", **fields}
    twin = {k: _twin(v) for k, v in first.items()}
    for envelope in (first, twin, first):
        try:
            expected: Any = coerce_envelope(envelope)
        except InvalidFieldError:
            expected = InvalidFieldError
        try:
            got: Any = t._envelope(envelope, {})
        except InvalidFieldError:
            got = InvalidFieldError
        if expected is InvalidFieldError:
            assert got is InvalidFieldError, envelope
        else:
            assert got == expected


def _twin(v: Any) -> Any:
    """A value equal to ``v`` with the same hash, of another type."""
    if v is True:
        return 1
    if v is False:
        return 0
    if type(v) is int and v in (0, 1):
        return bool(v)
    if type(v) is int and abs(v) < 2**52:
        return float(v)
    if type(v) is float and v.is_integer() and abs(v) < 2**52:
        return int(v)
    return v


def _learned_calls(t: Tally) -> int:
    """Calls in the learned state, every org, task type and model."""
    return int(
        sum(arm[11] for st_ in t.store.load().values() for arm in st_["cells"]["*"].values())
    )


_T: Tally | None = None


def _tally() -> Tally:
    global _T
    if _T is None:
        _T = Tally(POOL, fallback="gpt-4o", store=":memory:", background=False, seed=1)
    return _T


telemetry_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "quality": st.one_of(values, st.floats(0, 1)),
        "success": st.one_of(values, st.booleans()),
        "slugs": st.one_of(values, st.lists(st.sampled_from(["ok", "late", "Bad Slug"]))),
        "input_tokens": st.one_of(values, st.integers(0, 2**64)),
        "output_tokens": st.one_of(values, st.integers(0, 10**6)),
        "latency_ms": st.one_of(values, st.floats(0, 1e9)),
        "cost_usd": st.one_of(values, st.floats(0, 10)),
        "error": st.one_of(values, st.sampled_from(["RateLimitError", "timeout: 30s"])),
        "model": st.one_of(values, st.sampled_from(["gpt-4o", "openai/gpt-4o-mini"])),
        "org": st.one_of(values, st.sampled_from(["default", "team-b"])),
    },
)


@FUZZ
@given(st.lists(telemetry_kwargs, min_size=1, max_size=8))
def test_fuzzed_telemetry_either_raises_invalid_field_or_reaches_ledger_and_state(
    calls: list[dict[str, Any]],
) -> None:
    # Case: of 666 accepted fuzzed telemetry calls, none reached the ledger
    # or the state (one bad field in a batch took the batch down).
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=2) as t:
        accepted = 0
        for kwargs in calls:
            d = t.route(task_type="qa")
            try:
                t.telemetry(d, **kwargs)
                accepted += 1
            except InvalidFieldError:
                pass
        assert t.flush(10)
        assert t.telemetry_counts["rejected"] == 0
        assert t.ledger.count() == accepted
        assert _learned_calls(t) == accepted


feedback_kwargs = st.fixed_dictionaries(
    {"quality": st.one_of(values, st.floats(0, 1), st.booleans())},
    optional={
        "slugs": st.one_of(values, st.lists(st.sampled_from(["ok", "wrong"]))),
        "org": st.one_of(values, st.sampled_from(["default", "team-b"])),
        "model": st.one_of(values, st.just("gpt-4o")),
        "task_type": st.one_of(values, st.just("qa")),
    },
)


@FUZZ
@given(feedback_kwargs, st.one_of(st.none(), values, st.just("known")))
def test_fuzzed_feedback_raises_only_invalid_field_error_and_lands_once(
    kwargs: dict[str, Any], decision: Any
) -> None:
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3) as t:
        d = t.route(task_type="qa")
        t.telemetry(d, quality=0.5)
        target = d.decision_id if decision == "known" else decision
        try:
            t.feedback(target, **kwargs)
            ok = True
        except InvalidFieldError:
            ok = False
        assert t.flush(10)
        assert t.telemetry_counts["rejected"] == 0
        row = t.ledger.get(d.decision_id)
        assert row is not None
        if ok and target == d.decision_id:
            q = kwargs["quality"]
            assert row["quality"] == (float(q) if not isinstance(q, bool) else float(q))
        assert _learned_calls(t) == 1  # feedback never counts as another call
