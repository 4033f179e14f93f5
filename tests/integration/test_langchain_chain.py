"""ChatTally and the telemetry handler inside real LangChain chains (offline)."""

from __future__ import annotations

import asyncio
import runpy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from tally_core import Tally
from tally_langchain import ChatTally, auto_telemetry, collect_decisions
from tests.langchain_fakes import (
    FailingChild,
    FakeChild,
    ProviderDown,
    children,
    make_tally,
    specs,
)

PROMPT = ChatPromptTemplate.from_messages([("system", "You summarise."), ("user", "{text}")])


@pytest.fixture
def tally():
    t = make_tally()
    yield t
    t.close()


def rows(tally) -> list[dict[str, Any]]:
    assert tally.flush(5.0)
    return list(tally.ledger.rows())


def test_prompt_chat_parser_every_way_of_calling(tally):
    chat = ChatTally(tally=tally, models=children(), envelope={"task_type": "summarisation"})
    chain = PROMPT | chat | StrOutputParser()
    assert chain.invoke({"text": "a"}).startswith("answer from ")
    assert asyncio.run(chain.ainvoke({"text": "b"})).startswith("answer from ")
    assert "".join(chain.stream({"text": "c"})).startswith("answer from ")

    async def astream():
        return "".join([c async for c in chain.astream({"text": "d"})])

    assert asyncio.run(astream()).startswith("answer from ")
    assert len(chain.batch([{"text": "e"}, {"text": "f"}])) == 2
    assert len(asyncio.run(chain.abatch([{"text": "g"}, {"text": "h"}]))) == 2
    got = rows(tally)
    assert len(got) == 8
    assert all(r["decision_id"] and r["success"] == 1 for r in got)
    assert all(r["task_type"] == "summarisation" for r in got)
    # tokens once per call, streamed or not: the prompt is the same size each time
    assert {r["output_tokens"] for r in got} == {3}
    assert len({r["input_tokens"] for r in got}) == 1


def test_per_call_envelope_while_streaming_a_chain(tally):
    chat = ChatTally(tally=tally, models=children(), envelope={"task_type": "summarisation"})
    chain = PROMPT | chat | StrOutputParser()
    cfg = {"metadata": {"tally": {"task_type": "translation", "time_sensitive": True}}}
    "".join(chain.stream({"text": "x"}, cfg))

    async def astream():
        return [c async for c in chain.astream({"text": "x"}, cfg)]

    asyncio.run(astream())
    got = rows(tally)
    assert [(r["task_type"], r["time_sensitive"]) for r in got] == [("translation", 1)] * 2


def test_astream_events_streams_the_routed_child_in_one_run(tally):
    chat = ChatTally(tally=tally, models=children())
    chain = PROMPT | chat | StrOutputParser()

    async def events():
        return [e async for e in chain.astream_events({"text": "x"})]

    seen = asyncio.run(events())
    names = [(e["event"], e["name"]) for e in seen]
    assert ("on_chat_model_start", "ChatTally") in names
    assert sum(1 for e, _ in names if e == "on_chat_model_start") == 1
    assert sum(1 for e, _ in names if e == "on_chat_model_stream") >= 3
    (end,) = [e for e in seen if e["event"] == "on_chat_model_end"]
    served = end["data"]["output"].response_metadata["tally"]["model"]
    assert end["data"]["output"].content == f"answer from {served}"
    (row,) = rows(tally)
    assert row["model"] == served


def test_learning_sends_most_traffic_to_the_cheap_model_the_scorer_likes():
    tally = make_tally(seed=11)
    # cheap is good at summaries and bad at debugging; the others are good at both
    def scorer(messages, answer):
        model = answer.response_metadata["model_name"]
        task = str(messages[0].content)
        return 0.3 if (model == "cheap" and "debug" in task) else 0.95

    chat = ChatTally(tally=tally, models=children(), scorer=scorer)
    prompt = ChatPromptTemplate.from_messages([("system", "{task}"), ("user", "{text}")])
    chain = prompt | chat | StrOutputParser()
    served: dict[str, list[str]] = {"summarisation": [], "code-debug": []}
    for i in range(120):
        for task in served:
            with collect_decisions() as ds:
                chain.invoke(
                    {"task": task, "text": f"item {i}"},
                    {"metadata": {"tally": {"task_type": task, "quality_floor": 0.8}}},
                )
            served[task].append(ds[0].model)
    late_summaries = Counter(served["summarisation"][-40:])
    late_debug = Counter(served["code-debug"][-40:])
    assert late_summaries["cheap"] >= 36, late_summaries
    assert late_debug["cheap"] <= 2, late_debug
    assert late_debug["mid"] >= 30, late_debug  # the cheapest model that clears the floor
    # The phase under the floor these calls carried (without one, parity
    # first calibrates every model to 20 outcomes).
    stats = {s["model"]: s for s in tally.stats("summarisation", quality_floor=0.8)}
    assert stats["cheap"]["phase"] == "exploit"
    tally.close()


def test_tool_loop_through_bind_tools(tally):
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    kids = children()
    for k in kids.values():
        k.tool_args = {"a": 2, "b": 3}
    chat = ChatTally(tally=tally, models=kids, envelope={"task_type": "reasoning"})
    model = chat.bind_tools([add])
    messages: list[Any] = [HumanMessage("what is 2 + 3?")]
    for _ in range(3):
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(ToolMessage(str(add.invoke(call["args"])), tool_call_id=call["id"]))
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage", "AIMessage", "ToolMessage", "AIMessage"
    ]
    assert messages[2].content == "5"
    got = rows(tally)
    assert [r["tools_used"] for r in got] == [1, 1]


def test_errors_propagate_through_the_chain_and_fallbacks_still_work(tally):
    kids = {n: FailingChild(model=n) for n in ("cheap", "mid", "pricey")}
    chat = ChatTally(tally=tally, models=kids, envelope={"task_type": "qa"})
    with pytest.raises(ProviderDown):
        (PROMPT | chat | StrOutputParser()).invoke({"text": "x"})
    backup = FakeChild(model="backup", reply="from the backup")
    chain = PROMPT | chat.with_fallbacks([backup]) | StrOutputParser()
    assert chain.invoke({"text": "x"}) == "from the backup"
    got = rows(tally)
    assert [(r["success"], r["error"]) for r in got] == [(0, "ProviderDown")] * 2


def test_chattally_inside_a_larger_chain_with_auto_telemetry_for_other_models(tally):
    chat = ChatTally(tally=tally, models=children(), envelope={"task_type": "summarisation"})
    critic = FakeChild(model="mid", reply="looks good")
    chain = (
        PROMPT
        | chat
        | StrOutputParser()
        | RunnableLambda(lambda s: [HumanMessage(f"critique: {s}")])
        | critic
        | StrOutputParser()
    )
    with auto_telemetry(tally, task_type="code-review"):
        assert chain.invoke({"text": "x"}) == "looks good"
        chain.batch([{"text": "y"}, {"text": "z"}])
    got = rows(tally)
    routed = [r for r in got if r["decision_id"]]
    observed = [r for r in got if not r["decision_id"]]
    assert len(routed) == 3 and {r["task_type"] for r in routed} == {"summarisation"}
    assert len(observed) == 3
    assert {(r["model"], r["task_type"]) for r in observed} == {("mid", "code-review")}


def test_background_worker_and_disk_store(tmp_path):
    tally = Tally(specs(), fallback="pricey", store=str(tmp_path / "tally"), seed=5)
    chat = ChatTally(tally=tally, models=children())
    chain = PROMPT | chat | StrOutputParser()
    chain.batch([{"text": str(i)} for i in range(20)])
    assert tally.flush(10.0)
    assert tally.ledger.count() == 20
    kinds = {r["task_type"] for r in tally.ledger.rows()}  # inferred from the prompts
    tally.close()
    reopened = Tally(specs(), fallback="pricey", store=str(tmp_path / "tally"), seed=5)
    assert sum(s["calls"] for k in kinds for s in reopened.stats(k)) == 20
    reopened.close()


def test_the_example_runs_offline(capsys):
    path = Path(__file__).resolve().parents[2] / "examples" / "langchain_chain.py"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "Where the last 50 calls" in out
    assert "saved" in out


# Prompts of different kinds, none labelled: the kind each should be read as.
KINDS = {
    "Translate 'where is the train station?' into Spanish.": "translation",
    "My Python script crashes with KeyError: 'user_id' when I load the JSON file. "
    "What is wrong?": "code-debug",
    "Classify the sentiment of this review as positive, negative or neutral: "
    "'The battery died after two days.'": "classification",
    "Write a short poem about autumn leaves falling in the rain.": "creative-writing",
    "Should a small blog use a database or flat files?": "architecture-design",
    "Design a multi-region, exactly-once event pipeline for a global payments platform: "
    "compare Kafka and a database outbox, cover failover, partitions, idempotent consumers, "
    "p99 latency and the trade-offs of each.": "architecture-design",
}
RAW = ChatPromptTemplate.from_messages([("user", "{text}")])


def test_unlabelled_prompts_in_a_chain_land_in_their_task_types_and_learn_apart(tally):
    chat = ChatTally(tally=tally, models=children())
    chain = RAW | chat | StrOutputParser()
    texts = [t for t in KINDS for _ in range(3)]
    for t in texts:  # one at a time: the ledger's order is the prompts'
        chain.invoke({"text": t})
    got = rows(tally)
    assert [r["task_type"] for r in got] == [KINDS[t] for t in texts]
    # Each task type learns on its own state, and the two design prompts
    # (trivial and hard) in cells of their own within it.
    for kind, n in Counter(KINDS.values()).items():
        assert sum(s["calls"] for s in tally.stats(kind)) == 3 * n
    arch = [r["cell"] for r in got if r["task_type"] == "architecture-design"]
    assert {c.rsplit("|", 1)[1] for c in arch} == {"low", "high"}
    assert (tally.stats("general")[0]["calls"]) == 0


def test_given_fields_win_and_the_switch_turns_inference_off_in_a_chain(tally):
    given = ChatTally(tally=tally, models=children(),
                      envelope={"task_type": "qa-simple", "complexity": "high"})
    off = ChatTally(tally=tally, models=children(), infer_envelope=False)
    for chat in (given, off):
        for t in KINDS:
            (RAW | chat | StrOutputParser()).invoke({"text": t})
    got = rows(tally)
    assert {(r["task_type"], r["cell"]) for r in got[: len(KINDS)]} == {
        ("qa-simple", "prose|short|0|n|high")}
    assert {(r["task_type"], r["cell"]) for r in got[len(KINDS):]} == {
        ("general", "prose|short|0|n")}
