"""TallyMiddleware in real LangChain v1 agents (create_agent), over fake providers."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents import middleware as lc_middleware  # noqa: E402
from langchain.agents.middleware import ModelFallbackMiddleware  # noqa: E402
from langchain.agents.structured_output import ToolStrategy  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.messages.utils import count_tokens_approximately  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from tally_langchain import TallyMiddleware  # noqa: E402
from tests.langchain_fakes import (  # noqa: E402
    FailingStepChild,
    FakeChild,
    FlakyStepChild,
    agent_children,
    make_tally,
)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


TOOLS = [add, mul]  # each run: add, mul, then the answer = 3 model calls


class Person(BaseModel):
    """A person."""

    name: str
    age: int


@pytest.fixture
def tally():
    t = make_tally()
    yield t
    t.close()


def kids(**overrides: Any) -> dict[str, Any]:
    out = agent_children(**overrides)
    for k in out.values():
        k.tool_args = {"a": 2, "b": 3}
    return out


def rows(tally) -> list[dict[str, Any]]:
    assert tally.flush(5.0)
    return list(tally.ledger.rows())


def ai_messages(state: dict[str, Any]) -> list[AIMessage]:
    return [m for m in state["messages"] if isinstance(m, AIMessage)]


def ask(i: int = 0) -> dict[str, Any]:
    return {"messages": [HumanMessage(f"what is (2 + 3) * {i}?")]}


def agent_over(tally, models, *, middleware=None, **kw):
    mw = TallyMiddleware(tally, models, **kw)
    return create_agent(models["pricey"], TOOLS, middleware=middleware(mw) if middleware
                        else [mw]), mw


# -- each model call is routed and recorded once -----------------------------------


def test_each_model_call_of_a_run_is_routed_and_recorded_exactly_once(tally):
    models = kids()
    agent, _ = agent_over(tally, models, envelope={"task_type": "reasoning"})
    states = [agent.invoke(ask(i)) for i in range(6)]
    msgs = [m for s in states for m in ai_messages(s)]
    assert len(msgs) == 18  # 3 model calls per run
    assert all(len([m for m in s["messages"] if isinstance(m, ToolMessage)]) == 2 for s in states)
    ids = [m.response_metadata["tally"]["decision_id"] for m in msgs]
    assert len(set(ids)) == 18  # one decision per model call, not per run
    got = rows(tally)
    assert sorted(r["decision_id"] for r in got) == sorted(ids)
    by_id = {r["decision_id"]: r for r in got}
    for m in msgs:
        row = by_id[m.response_metadata["tally"]["decision_id"]]
        # the row names the model that answered, with its tokens
        assert row["model"] == m.response_metadata["model_name"]
        assert row["model"] == m.response_metadata["tally"]["model"]
        assert row["output_tokens"] == m.usage_metadata["output_tokens"]
        assert row["input_tokens"] == m.usage_metadata["input_tokens"]
        assert row["success"] == 1 and row["latency_ms"] >= 0
        assert row["tools_used"] == 2 and row["task_type"] == "reasoning"
    calls = sum(len(k.calls) for k in models.values())
    assert calls == 18


def test_async_agent(tally):
    models = kids()
    agent, _ = agent_over(tally, models, envelope={"task_type": "reasoning"})

    async def go():
        return [await agent.ainvoke(ask(i)) for i in range(3)]

    msgs = [m for s in asyncio.run(go()) for m in ai_messages(s)]
    assert len(msgs) == 9
    got = rows(tally)
    assert len(got) == 9 and all(r["success"] == 1 for r in got)
    assert {r["decision_id"] for r in got} == {
        m.response_metadata["tally"]["decision_id"] for m in msgs
    }


def test_streaming_agent_sync_and_async(tally):
    models = kids()
    agent, _ = agent_over(tally, models, envelope={"task_type": "reasoning"})
    chunks = list(agent.stream(ask(1), stream_mode="messages"))
    text = "".join(str(c.content) for c, _ in chunks if c.type == "AIMessageChunk")
    assert text.startswith("answer from")

    async def go():
        return [c async for c in agent.astream(ask(2), stream_mode=["messages", "values"])]

    events = asyncio.run(go())
    final = [data for mode, data in events if mode == "values"][-1]
    assert len(ai_messages(final)) == 3
    got = rows(tally)
    assert len(got) == 6  # 3 model calls per streamed run, each once
    assert all(r["success"] == 1 and r["output_tokens"] for r in got)
    assert all(m.response_metadata["tally"]["decision_id"] for m in ai_messages(final))


def test_envelope_is_inferred_from_each_call(tally):
    models = kids()
    for k in models.values():
        k.tool_args = {"name": "Ann", "age": 3}
    agent = create_agent(models["pricey"], [], response_format=ToolStrategy(Person),
                         middleware=[TallyMiddleware(tally, models)])
    question = HumanMessage("Ann is 3 " * 200)
    state = agent.invoke({"messages": [question]})
    assert state["structured_response"] == Person(name="Ann", age=3)
    (row,) = rows(tally)
    # No task type given: the one read off the messages (tally_core.infer), never absent.
    assert row["structure_type"] == "json" and row["task_type"] != "general"
    assert int(row["context_length"]) == count_tokens_approximately([question]) > 400
    agent2, _ = agent_over(tally, kids())
    agent2.invoke(ask())
    assert {r["tools_used"] for r in rows(tally)[1:]} == {2}


def test_task_type_from_a_function_of_state_and_runtime(tally):
    seen = []

    def envelope(state, runtime):
        seen.append(runtime is not None)
        last = state["messages"][-1]
        return "summarisation" if isinstance(last, ToolMessage) else {"task_type": "reasoning"}

    agent, _ = agent_over(tally, kids(), envelope=envelope)
    agent.invoke(ask())
    assert [r["task_type"] for r in rows(tally)] == ["reasoning", "summarisation", "summarisation"]
    assert seen == [True] * 3


def test_a_cheap_model_takes_the_easy_steps_once_it_has_evidence():
    tally = make_tally(seed=3)

    def envelope(state, runtime):
        last = state["messages"][-1]
        task = "summarisation" if isinstance(last, ToolMessage) else "reasoning"
        return {"task_type": task, "quality_floor": 0.8}

    def scorer(messages, answer):
        hard = not isinstance(messages[-1], ToolMessage)
        cheap = answer.response_metadata["model_name"] == "cheap"
        return 0.3 if (cheap and hard) else 0.95

    models = kids()
    agent, _ = agent_over(tally, models, envelope=envelope, scorer=scorer)
    for i in range(100):
        agent.invoke(ask(i))
    got = rows(tally)
    assert len(got) == 300
    late = got[-120:]  # the last 40 runs
    easy = Counter(r["model"] for r in late if r["task_type"] == "summarisation")
    hard = Counter(r["model"] for r in late if r["task_type"] == "reasoning")
    assert sum(easy.values()) == 80 and sum(hard.values()) == 40
    assert easy["cheap"] >= 72, easy  # >= 90% of the easy steps on the cheapest model
    assert hard["cheap"] <= 2, hard  # the hard step stays on a model that clears the floor
    tally.close()


# -- composition with LangChain's fallback and retry middleware ----------------------


def test_model_fallback_inside_records_each_attempt_against_its_model(tally):
    models = kids(cheap=FailingStepChild(model="cheap"))
    agent, _ = agent_over(
        tally, models, envelope={"task_type": "reasoning"},
        middleware=lambda mw: [mw, ModelFallbackMiddleware(models["pricey"])],
    )
    msgs = [m for i in range(8) for m in ai_messages(agent.invoke(ask(i)))]
    assert len(msgs) == 24  # every call answered, through the fallback when cheap failed
    got = rows(tally)
    failures = [r for r in got if r["success"] == 0]
    assert len(failures) == len(models["cheap"].calls) >= 1
    assert {(r["model"], r["error"]) for r in failures} == {("cheap", "ProviderDown")}
    successes = [r for r in got if r["success"] == 1]
    assert len(successes) == 24  # one per model call
    by_id = {r["decision_id"]: r for r in successes}
    for r in failures:  # the same call, served by the fallback model
        assert by_id[r["decision_id"]]["model"] == "pricey"
    for m in msgs:
        row = by_id[m.response_metadata["tally"]["decision_id"]]
        assert row["model"] == m.response_metadata["tally"]["model"]
        assert row["model"] == m.response_metadata["model_name"]


def test_model_fallback_outside_is_respected_not_rerouted(tally):
    models = kids(cheap=FailingStepChild(model="cheap"))
    agent, _ = agent_over(
        tally, models, envelope={"task_type": "reasoning", "allowed_models": ["cheap"]},
        middleware=lambda mw: [ModelFallbackMiddleware(models["mid"]), mw],
    )
    msgs = ai_messages(agent.invoke(ask()))
    assert [m.response_metadata["tally"]["model"] for m in msgs] == ["mid"] * 3
    assert len(models["cheap"].calls) == 3 and len(models["mid"].calls) == 3
    assert not models["pricey"].calls  # the fallback's model, not Tally's fallback
    got = rows(tally)
    assert [(r["model"], r["success"]) for r in got] == [("cheap", 0), ("mid", 1)] * 3


def retry(**kw):
    cls = getattr(lc_middleware, "ModelRetryMiddleware", None)  # langchain >= 1.1
    if cls is None:
        pytest.skip("this langchain has no ModelRetryMiddleware")
    return cls(**kw)


def test_model_retry_inside_records_the_failed_and_the_served_attempt(tally):
    models = {n: FlakyStepChild(model=n, reply=f"answer from {n}", failures=1,
                                tool_args={"a": 2, "b": 3}) for n in ("cheap", "mid", "pricey")}
    agent, _ = agent_over(
        tally, models, envelope={"task_type": "reasoning"},
        middleware=lambda mw: [mw, retry(max_retries=2, initial_delay=0.0, jitter=False)],
    )
    msgs = [m for i in range(4) for m in ai_messages(agent.invoke(ask(i)))]
    assert len(msgs) == 12
    got = rows(tally)
    failures = [r for r in got if r["success"] == 0]
    # each child failed on its first call only, and that call was retried on it
    used = [n for n, m in models.items() if m.calls]
    assert sorted(r["model"] for r in failures) == sorted(used)
    by_id = {r["decision_id"]: r for r in got if r["success"] == 1}
    assert len(by_id) == 12
    assert all(by_id[r["decision_id"]]["model"] == r["model"] for r in failures)


def test_retry_outside_routes_each_attempt_anew(tally):
    models = kids(cheap=FailingStepChild(model="cheap"))
    agent, _ = agent_over(
        tally, models, envelope={"task_type": "reasoning"},
        middleware=lambda mw: [retry(max_retries=3, initial_delay=0.0, jitter=False), mw],
    )
    msgs = [m for i in range(6) for m in ai_messages(agent.invoke(ask(i)))]
    assert len(msgs) == 18
    got = rows(tally)
    assert sum(1 for r in got if r["success"] == 0) == len(models["cheap"].calls)
    assert sum(1 for r in got if r["success"] == 1) == 18
    assert len({r["decision_id"] for r in got}) == len(got)  # a new decision per attempt


# -- fail open ------------------------------------------------------------------------


def test_routing_failure_falls_back_and_logs_once(tally, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("state store exploded")

    monkeypatch.setattr(tally, "route", broken)
    models = kids()
    agent, _ = agent_over(tally, models, envelope={"task_type": "reasoning"})
    with caplog.at_level(logging.DEBUG, logger="tally.langchain"):
        msgs = [m for i in range(3) for m in ai_messages(agent.invoke(ask(i)))]
    assert [m.response_metadata["tally"]["model"] for m in msgs] == ["pricey"] * 9
    assert all(m.response_metadata["tally"]["routed"] is False for m in msgs)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fail open" in warnings[0].getMessage()
    got = rows(tally)
    assert len(got) == 9 and {r["model"] for r in got} == {"pricey"}
    assert all(r["decision_id"] is None for r in got)


def test_a_closed_tally_never_breaks_the_agent():
    tally = make_tally()
    models = kids()
    agent, _ = agent_over(tally, models, envelope={"task_type": "reasoning"})
    tally.close()
    state = agent.invoke(ask())
    assert ai_messages(state)[-1].content == "answer from pricey"


def test_a_failing_model_reaches_the_agent_and_is_recorded(tally):
    models = kids(pricey=FailingStepChild(model="pricey"))
    agent, _ = agent_over(tally, models, envelope={"task_type": "reasoning",
                                                  "allowed_models": ["pricey"]})
    with pytest.raises(Exception, match="service unavailable"):
        agent.invoke(ask())
    (row,) = rows(tally)
    assert (row["model"], row["success"], row["error"]) == ("pricey", 0, "ProviderDown")


def test_late_feedback_joins_the_decision_on_the_message(tally):
    agent, _ = agent_over(tally, kids(), envelope={"task_type": "reasoning"})
    last = ai_messages(agent.invoke(ask()))[-1]
    did = last.response_metadata["tally"]["decision_id"]
    tally.feedback(did, quality=0.25)
    assert rows(tally) and tally.ledger.get(did)["quality"] == 0.25


def test_bad_arguments_name_the_field(tally):
    from tally_core import InvalidFieldError

    with pytest.raises(InvalidFieldError, match="models"):
        TallyMiddleware(tally, {"nope": FakeChild()})
    with pytest.raises(InvalidFieldError, match="tally"):
        TallyMiddleware("not a tally", kids())
    with pytest.raises(InvalidFieldError, match="envelope"):
        TallyMiddleware(tally, kids(), envelope=42)
    with pytest.raises(InvalidFieldError, match="quality_floor"):
        TallyMiddleware(tally, kids(), envelope={"quality_floor": 3})


def test_tally_langchain_imports_without_langchain_and_says_what_to_install():
    code = (
        "import sys; sys.modules['langchain'] = None\n"
        "import tally_langchain\n"
        "try:\n"
        "    tally_langchain.TallyMiddleware\n"
        "except ImportError as exc:\n"
        "    print('ERR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "ERR TallyMiddleware needs the 'langchain' package" in out
    assert "tally-router[langchain]" in out


# -- ModelRouterMiddleware with Tally as its decision model ---------------------------


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_tally_decision_model_drives_model_router_middleware(tally):
    middleware = lc_middleware
    if not hasattr(middleware, "ModelRouterMiddleware"):
        pytest.skip("this langchain has no ModelRouterMiddleware")
    from tally_langchain import TallyDecisionModel

    models = kids()
    labels = {"fast": "cheap", "balanced": "mid", "strong": "pricey"}
    router = middleware.ModelRouterMiddleware(
        choices={label: middleware.ModelChoice(model=models[name], criteria=f"{label} tasks")
                 for label, name in labels.items()},
        instructions="Choose the least costly model suited to the task.",
        classifier=TallyDecisionModel(tally=tally, routes=labels,
                                      envelope={"task_type": "reasoning"}),
    )
    agent = create_agent(models["pricey"], TOOLS, middleware=[router])
    served = []
    for i in range(6):
        state = agent.invoke(ask(i))
        answer = state["model_route"]
        names = {m.response_metadata["model_name"] for m in ai_messages(state)}
        assert names == {labels[answer.choice]}  # the whole run on the chosen model
        assert answer.decision_id and answer.probabilities[answer.choice] == 1.0
        tally.telemetry(answer.decision_id, success=True)
        served.append(labels[answer.choice])
    got = rows(tally)
    assert [r["model"] for r in got] == served
    assert all(r["task_type"] == "reasoning" and r["decision_id"] for r in got)


def test_tally_decision_model_rejects_labels_outside_the_pool(tally):
    decisions = pytest.importorskip("langchain_core.decisions")
    Choice = decisions.Choice

    from tally_core import InvalidFieldError
    from tally_langchain import TallyDecisionModel

    with pytest.raises(InvalidFieldError, match="routes"):
        TallyDecisionModel(tally=tally, routes={"x": "nope"})
    model = TallyDecisionModel(tally=tally)
    with pytest.raises(InvalidFieldError, match="routes"):
        model.invoke({"state": "hi", "questions": {
            "route": Choice(instructions="pick", criteria={"a": "x", "b": "y"})}})


def test_chattally_as_an_agents_model_streams_tokens_and_records_each_call(tally):
    from tally_langchain import ChatTally

    chat = ChatTally(tally=tally, models=kids(), envelope={"task_type": "reasoning"})
    agent = create_agent(chat, TOOLS)
    chunks = [c for c, _ in agent.stream(ask(), stream_mode="messages")
              if c.type == "AIMessageChunk"]
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) == 3  # "answer", " from", " <model>": streamed word by word
    got = rows(tally)
    assert len(got) == 3 and all(r["success"] == 1 and r["tools_used"] == 2 for r in got)


def test_auto_telemetry_does_not_count_the_middlewares_calls_twice(tally):
    from tally_langchain import auto_telemetry

    agent, _ = agent_over(tally, kids(), envelope={"task_type": "reasoning"})
    with auto_telemetry(tally, task_type="reasoning"):
        agent.invoke(ask())
    got = rows(tally)
    assert len(got) == 3 and all(r["decision_id"] for r in got)


def test_inference_off_in_the_middleware_keeps_the_default_task_type(tally):
    agent = create_agent(kids()["pricey"], [], middleware=[
        TallyMiddleware(tally, kids(), infer_envelope=False)])
    agent.invoke({"messages": [HumanMessage("Translate 'good night' into French.")]})
    agent2 = create_agent(kids()["pricey"], [], middleware=[TallyMiddleware(tally, kids())])
    agent2.invoke({"messages": [HumanMessage("Translate 'good night' into French.")]})
    got = rows(tally)
    assert [(r["task_type"], r["cell"].count("|")) for r in got] == [
        ("general", 3), ("translation", 4)]
