from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tally_core import Envelope, InvalidFieldError
from tally_core.envelope import KNOWN_TASK_TYPES, coerce_envelope


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("code_generation", "code-generation"),
        ("Code Generation", "code-generation"),
        ("summarization", "summarisation"),
        ("summarize", "summarisation"),
        ("qa", "qa-simple"),
        ("my-custom-task", "my-custom-task"),
    ],
)
def test_task_type_aliases_normalise(given_: str, expected: str) -> None:
    assert Envelope(task_type=given_).task_type == expected


def test_defaults_and_cell() -> None:
    env = Envelope(task_type="code-debug", quality_floor=0.8)
    assert env.structure_type == "prose"
    assert env.tools_used == 0
    assert env.org == "default"
    assert env.cell == "prose|short|0|n"
    env2 = Envelope(
        task_type="extraction",
        structure_type="json",
        context_length=50_000,
        tools_used=5,
        time_sensitive=True,
    )
    assert env2.cell == "json|long|4+|t"
    assert env2.min_context_tokens == 50_000
    assert Envelope(task_type="x", context_length="medium").min_context_tokens == 4_001


def test_complexity_is_a_cell_of_its_own_and_absent_keeps_the_old_key() -> None:
    assert Envelope(task_type="qa", complexity=None).cell == "prose|short|0|n"
    assert Envelope(task_type="qa", complexity="HIGH").cell == "prose|short|0|n|high"
    assert Envelope(task_type="qa", complexity=0.2).cell == "prose|short|0|n|low"
    assert Envelope(task_type="qa", complexity=0.5).cell == "prose|short|0|n|medium"
    assert Envelope(task_type="qa", complexity=1).cell == "prose|short|0|n|high"
    # Plans are cached per cell: a level is part of the plan key, a score only by its level.
    assert Envelope(task_type="qa", complexity=0.8).plan_key == Envelope(
        task_type="qa", complexity="high").plan_key
    assert Envelope(task_type="qa", complexity="low").plan_key != Envelope(task_type="qa").plan_key


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"structure_type": "html"}, "structure_type", "prose, code, json, list, mixed"),
        ({"context_length": "huge"}, "context_length", "very-long"),
        ({"context_length": -5}, "context_length", "between 0"),
        ({"tools_used": -1}, "tools_used", "greater than or equal to 0"),
        ({"tools_used": "3"}, "tools_used", "integer"),
        ({"tools_used": True}, "tools_used", "integer"),
        ({"time_sensitive": "yes"}, "time_sensitive", "boolean"),
        ({"quality_floor": 1.5}, "quality_floor", "less than or equal to 1"),
        ({"quality_floor": -0.1}, "quality_floor", "greater than or equal to 0"),
        ({"quality_floor": float("nan")}, "quality_floor", "finite"),
        ({"quality_floor": True}, "quality_floor", "not a bool"),
        ({"max_cost_usd": 0}, "max_cost_usd", "greater than 0"),
        ({"org": "bad org!"}, "org", "letters, digits"),
        ({"task_type": "no spaces allowed!"}, "task_type", "custom slug"),
        ({"colour": "red"}, "colour", "unknown field; allowed fields: task_type"),
        ({"tags": ["x" * 100]}, "tags", "1-64 characters"),
    ],
)
def test_bad_values_name_the_field(fields: dict, field: str, fragment: str) -> None:
    data = {"task_type": "qa-simple", **fields}
    with pytest.raises(InvalidFieldError) as info:
        coerce_envelope(data)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    # Direct construction raises the same error.
    with pytest.raises(InvalidFieldError):
        Envelope(**data)


def test_missing_task_type() -> None:
    with pytest.raises(InvalidFieldError) as info:
        coerce_envelope({})
    assert info.value.field == "task_type"


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidFieldError) as info:
        coerce_envelope(["task_type", "x"])  # type: ignore[arg-type]
    assert info.value.field == "envelope"


def test_envelope_is_frozen_and_hashable() -> None:
    env = Envelope(task_type="qa")
    with pytest.raises(ValidationError):
        env.task_type = "other"  # type: ignore[misc]
    assert hash(env) == hash(Envelope(task_type="qa-simple"))


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**9),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    task=st.one_of(st.sampled_from(KNOWN_TASK_TYPES), st.text(max_size=30)),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "structure_type",
                "context_length",
                "tools_used",
                "time_sensitive",
                "quality_floor",
                "org",
                "tags",
                "max_cost_usd",
                "allowed_models",
                "expected_output_tokens",
                "bogus",
            ]
        ),
        _values,
        max_size=4,
    ),
)
def test_random_envelopes_validate_or_raise_the_documented_error(task: object, extra: dict) -> None:
    data = {"task_type": task, **extra}
    try:
        env = coerce_envelope(data)
    except InvalidFieldError as exc:
        assert exc.field in {*data, "task_type"}
        assert str(exc).startswith(f"{exc.field}: ")
    else:
        assert env.task_type and env.cell.count("|") == 3 + (env.complexity is not None)
        if env.quality_floor is not None:
            assert 0.0 <= env.quality_floor <= 1.0
        assert env.tools_used >= 0
