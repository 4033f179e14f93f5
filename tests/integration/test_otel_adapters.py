"""OpenTelemetry export through both adapters: a real litellm.Router (mocked
providers) and ChatTally in a LangChain chain. One GenAI span per call, the
attributes as specified, and no prompt or completion text anywhere."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from tally_core.otel import OTelExporter  # noqa: E402

SECRET_PROMPT = "my-secret-prompt-canary"
SECRET_ANSWER = "the-secret-answer-canary"
GENAI = (
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)
TALLY = ("tally.decision_id", "tally.phase", "tally.confidence", "tally.task_type",
         "tally.cost_usd", "tally.org")  # fmt: skip


def _memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _no_text(spans: tuple[ReadableSpan, ...]) -> None:
    for s in spans:
        blob = repr(dict(s.attributes or {})) + s.name + repr(s.events)
        assert SECRET_PROMPT not in blob and SECRET_ANSWER not in blob


def _check(
    span: ReadableSpan, row: dict[str, Any], request_model: str, provider: str | None
) -> None:
    a = dict(span.attributes or {})
    assert all(k in a for k in GENAI + TALLY), sorted(a)
    assert a.get("gen_ai.provider.name") == provider
    assert a["gen_ai.request.model"] == request_model
    assert a["gen_ai.response.model"] == row["model"]
    assert a["tally.decision_id"] == row["decision_id"]
    assert a["tally.phase"] == row["phase"]
    assert a["gen_ai.usage.input_tokens"] == row["input_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == row["output_tokens"] > 0
    assert a["tally.cost_usd"] == pytest.approx(row["cost_usd"])


def test_litellm_router_calls_become_genai_spans() -> None:
    pytest.importorskip("litellm")
    from tests.integration.litellm_support import dep, installed

    provider, memory = _memory()
    deployments = [
        dep("gpt-4o-mini", "mini", reply=SECRET_ANSWER),
        dep("claude-haiku-4-5", "haiku", reply=SECRET_ANSWER),
        dep("openai/gpt-4o", "4o", reply=SECRET_ANSWER),
    ]
    exp = OTelExporter(tracer_provider=provider, request_model="auto")
    with installed(deployments, tally_kwargs={"otel": exp}) as (router, tally, strategy):
        for _ in range(5):
            router.completion(
                model="auto",
                messages=[{"role": "user", "content": SECRET_PROMPT}],
                metadata={"tally": {"task_type": "qa-simple"}},
            )
        strategy.flush()
        assert tally.flush(5.0)
        rows = {r["decision_id"]: r for r in tally.ledger.rows()}
    spans = memory.get_finished_spans()
    assert len(spans) == len(rows) == 5
    for s in spans:
        row = rows[s.attributes["tally.decision_id"]]
        provider_name = {"gpt-4o-mini": "openai", "claude-haiku-4-5": "anthropic"}.get(
            row["model"], "openai"
        )
        _check(s, row, "auto", provider_name)
        assert s.attributes["tally.task_type"] == "qa-simple"
    _no_text(spans)


def test_langchain_chattally_calls_become_genai_spans() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from tally_core import ModelSpec, Tally
    from tally_langchain import ChatTally
    from tests.langchain_fakes import PRICES, FakeChild, specs

    provider, memory = _memory()
    # Custom models: the provider is what the pool says ("cheap" says none).
    pool = [s.model_copy(update={"provider": None if s.name == "cheap" else "acme-ai"})
            for s in specs()]  # fmt: skip
    assert all(isinstance(s, ModelSpec) for s in pool)
    tally = Tally(pool, fallback="pricey", store=":memory:", seed=7, background=False,
                  otel=OTelExporter(tracer_provider=provider))  # fmt: skip
    try:
        kids = {n: FakeChild(model=n, reply=SECRET_ANSWER) for n in PRICES}
        chat = ChatTally(tally=tally, models=kids, envelope={"task_type": "summarisation"})
        chain = ChatPromptTemplate.from_messages([("user", "{text}")]) | chat | StrOutputParser()
        for _ in range(4):
            assert chain.invoke({"text": SECRET_PROMPT}) == SECRET_ANSWER
        assert tally.flush(5.0)
        rows = {r["decision_id"]: r for r in tally.ledger.rows()}
    finally:
        tally.close()
    spans = memory.get_finished_spans()
    assert len(spans) == len(rows) == 4
    for s in spans:
        row = rows[s.attributes["tally.decision_id"]]
        _check(s, row, "pricey", None if row["model"] == "cheap" else "acme-ai")  # the fallback
        assert s.attributes["tally.task_type"] == "summarisation"
    _no_text(spans)
