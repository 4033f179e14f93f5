"""OpenTelemetry GenAI export: a span per recorded call, with the GenAI and
tally.* attributes, a child of the caller's span, never any text, off by default."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from tally_core import InvalidFieldError, Tally  # noqa: E402
from tally_core.otel import OTelExporter  # noqa: E402

POOL = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _tally(provider: TracerProvider, **kw: Any) -> Tally:
    kw.setdefault("background", False)
    return Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3,
                 otel=OTelExporter(tracer_provider=provider), **kw)  # fmt: skip


def test_one_span_per_recorded_call_with_the_genai_attributes(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = spans
    with _tally(provider) as tally:
        d = tally.route(task_type="code-debug", quality_floor=0.8, org="acme")
        tally.telemetry(d, quality=0.9, input_tokens=1200, output_tokens=300, latency_ms=850.0,
                        slugs=["incomplete"])  # fmt: skip
        row = tally.ledger.get(d.decision_id)
    (span,) = memory.get_finished_spans()
    a = dict(span.attributes or {})
    assert span.name == f"chat {d.model}" and span.kind is SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o"  # the fallback: what the call would have used
    assert a["gen_ai.response.model"] == d.model == row["model"]
    assert a["gen_ai.provider.name"] == {"gpt-4o-mini": "openai", "gpt-4o": "openai",
                                         "claude-haiku-4-5": "anthropic"}[d.model]  # fmt: skip
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (1200, 300)
    assert a["tally.decision_id"] == d.decision_id
    assert a["tally.phase"] == d.phase and a["tally.confidence"] == pytest.approx(d.confidence)
    assert a["tally.task_type"] == "code-debug" and a["tally.org"] == "acme"
    assert a["tally.quality_floor"] == 0.8 and a["tally.quality"] == 0.9
    assert a["tally.cost_usd"] == pytest.approx(row["cost_usd"]) and row["cost_usd"] > 0
    assert a["tally.success"] is True and a["tally.holdout"] is False
    assert tuple(a["tally.slugs"]) == ("incomplete",)
    assert "error.type" not in a
    assert (span.end_time - span.start_time) == pytest.approx(850e6, rel=1e-6)
    assert span.end_time == pytest.approx(row["ts"] * 1e9, abs=1e3)
    assert span.status.status_code is StatusCode.UNSET


def test_failures_request_model_and_background_worker(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = spans
    exp = OTelExporter(tracer_provider=provider, request_model="auto")
    with Tally(POOL, fallback="gpt-4o", store=":memory:", seed=3, otel=exp) as tally:
        for i in range(40):
            d = tally.route(task_type="qa-simple")
            if i % 10 == 0:
                tally.telemetry(d, success=False, error="RateLimitError", latency_ms=20.0)
            else:
                tally.telemetry(d, quality=1.0, input_tokens=10, output_tokens=5)
        assert tally.flush(5.0)
    got = memory.get_finished_spans()
    assert len(got) == 40 == exp.exported
    failed = [s for s in got if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 4
    assert {s.attributes["error.type"] for s in failed} == {"RateLimitError"}
    assert {s.attributes["gen_ai.request.model"] for s in got} == {"auto"}
    # Late feedback updates the ledger, not a second span.
    assert len({s.attributes["tally.decision_id"] for s in got}) == 40


def test_the_span_is_a_child_of_the_callers_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = spans
    tracer = provider.get_tracer("app")
    with _tally(provider, background=True) as tally:
        with tracer.start_as_current_span("handle request") as parent:
            d = tally.route(task_type="qa-simple")
            tally.telemetry(d, quality=1.0)
        d2 = tally.route(task_type="qa-simple")
        tally.telemetry(d2, quality=1.0)
        assert tally.flush(5.0)
    done = memory.get_finished_spans()
    by_name = {s.attributes.get("tally.decision_id", s.name): s for s in done}
    child, orphan = by_name[d.decision_id], by_name[d2.decision_id]
    assert child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id
    assert child.context.trace_id == parent.get_span_context().trace_id
    assert orphan.parent is None


def test_no_prompt_text_and_off_by_default(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, memory = spans
    with _tally(provider) as tally:
        d = tally.route(task_type="summarisation", tags=["team-a"])
        tally.telemetry(d, quality=0.5, input_tokens=3, output_tokens=2)
        tally.feedback(d, quality=0.1, slugs=["hallucination"])
    (span,) = memory.get_finished_spans()
    allowed = {"gen_ai.", "tally.", "error."}
    assert all(any(k.startswith(p) for p in allowed) for k in span.attributes)
    with Tally(POOL, store=":memory:") as off:
        assert off._otel is None
    # Off: tally_core never imports OpenTelemetry.
    code = (
        "import sys; from tally_core import Tally; "
        "t = Tally(['gpt-4o-mini'], store=':memory:', background=False); "
        "t.telemetry(t.route(task_type='qa-simple'), quality=1.0); t.close(); "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('opentelemetry', 'tally_core.otel'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_value_and_a_broken_exporter_never_reach_the_caller(
    spans: tuple[TracerProvider, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InvalidFieldError, match="otel: must be True, False or an OTelExporter"):
        Tally(POOL, store=":memory:", otel="yes")
    provider, _ = spans

    class Broken(OTelExporter):
        def _emit(self, row: Any) -> None:
            raise RuntimeError("collector down")

    with (
        caplog.at_level(logging.WARNING, logger="tally.otel"),
        Tally(
            POOL, store=":memory:", background=False, otel=Broken(tracer_provider=provider)
        ) as tally,
    ):
        for _ in range(3):
            d = tally.route(task_type="qa-simple")
            tally.telemetry(d, quality=1.0)
        assert tally.ledger.count() == 3  # recorded all the same
    assert sum("could not export a span" in r.message for r in caplog.records) == 1


def test_otel_true_uses_the_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    with Tally(POOL, store=":memory:", background=False, otel=True) as tally:
        tally.telemetry(tally.route(task_type="qa-simple"), quality=1.0)
    assert len(memory.get_finished_spans()) == 1
