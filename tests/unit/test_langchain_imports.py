"""tally_langchain's public API, pinned (names and where they live)."""

from __future__ import annotations

import tally_langchain

EXPECTED = [
    "AutoTelemetry",
    "ChatTally",
    "TallyCallbackHandler",
    "TallyDecisionModel",
    "TallyMiddleware",
    "auto_telemetry",
    "collect_decisions",
]


def test_all_is_pinned():
    assert sorted(tally_langchain.__all__) == EXPECTED


def test_every_public_name_resolves():
    for name in EXPECTED:
        try:
            obj = getattr(tally_langchain, name)
        except ImportError as exc:  # an optional dependency: the error says what to install
            assert "pip install" in str(exc)
            continue
        assert obj.__name__ == name


def test_an_unknown_name_is_an_attribute_error():
    try:
        tally_langchain.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
