"""Shadow copies from ChatTally and TallyMiddleware, on LangChain's fake chat models: made
in the background after the caller has the answer, recorded as evidence for the
candidate and paired in the shadow report, never delaying, altering or failing the call."""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from tally_langchain import ChatTally
from tests.langchain_fakes import make_tally

ENV = {"task_type": "qa-simple", "quality_floor": 0.8}
N = 6


def score(messages, message):
    return 0.9 if "good" in str(message.content) else 0.2


def shadowed(candidate: FakeListChatModel, **kw):
    """A Tally whose 'cheap' model is known to fail the floor (so it never serves) and
    is shadowed on every call; a ChatTally over fake children."""
    tally = make_tally(**kw)
    for _ in range(40):
        tally.telemetry(model="cheap", task_type="qa-simple", quality=0.1)
    assert tally.flush()
    tally.shadow("cheap", sample=1.0)
    chat = ChatTally(tally=tally, envelope=ENV, scorer=score, models={
        "cheap": candidate,
        "mid": FakeListChatModel(responses=["good answer"]),
        "pricey": FakeListChatModel(responses=["good answer"]),
    })
    return tally, chat


def copies(tally):
    return [r for r in tally.ledger.rows() if "shadow" in (r["tags"] or ())]


def test_chat_tally_copies_are_evidence_for_the_candidate_and_paired():
    tally, chat = shadowed(FakeListChatModel(responses=["meh"]))
    try:
        answers = [chat.invoke("what is 2 + 2?") for _ in range(N)]
        assert tally.flush(10.0)
        assert {a.response_metadata["tally"]["model"] for a in answers} <= {"mid", "pricey"}
        assert all(a.content == "good answer" for a in answers)
        rows = copies(tally)
        assert len(rows) == N and {r["model"] for r in rows} == {"cheap"}
        primary_ids = {a.response_metadata["tally"]["decision_id"] for a in answers}
        assert {t[len("shadow-of:"):] for r in rows for t in r["tags"]
                if t.startswith("shadow-of:")} == primary_ids
        assert all(r["quality"] == 0.2 for r in rows)  # graded by the adapter's scorer
        cheap = next(s for s in tally.stats("qa-simple") if s["model"] == "cheap")
        assert cheap["calls"] == 40 + N
        (pair,) = tally.shadow_report()
        assert (pair.task_type, pair.candidate, pair.pairs) == ("qa-simple", "cheap", N)
        assert pair.quality_diff == pytest.approx(-0.7)
    finally:
        tally.close()


def test_a_slow_shadow_never_delays_the_caller_and_flush_waits_for_it():
    tally, chat = shadowed(FakeListChatModel(responses=["good too"], sleep=0.4))
    try:
        tally.stop_shadow("cheap")
        chat.invoke("warm up")
        t0 = time.perf_counter()
        for _ in range(3):
            chat.invoke("q")
        without = time.perf_counter() - t0
        tally.shadow("cheap", sample=1.0)
        t0 = time.perf_counter()
        for _ in range(3):
            assert chat.invoke("q").content == "good answer"
        with_shadows = time.perf_counter() - t0
        # Three 0.4 s copies in the caller's way would add >= 1.2 s: a wide bound.
        assert with_shadows < without + 0.6
        assert tally.flush(10.0)  # flush waits for the copies
        rows = copies(tally)
        assert len(rows) == 3 and all(r["latency_ms"] >= 350 for r in rows)
        assert all(r["quality"] == 0.9 for r in rows)
    finally:
        tally.close()


def test_a_failing_shadow_never_fails_the_caller_and_counts_against_the_candidate():
    tally, chat = shadowed(FakeListChatModel(responses=[]))  # raises IndexError
    try:
        answers = [chat.invoke("q") for _ in range(3)]
        streamed = "".join(str(c.content) for c in chat.stream("q"))
        assert [a.content for a in answers] == ["good answer"] * 3
        assert streamed == "good answer"
        assert tally.flush(10.0)
        rows = copies(tally)
        assert len(rows) == 4 and all(r["success"] == 0 for r in rows)
        assert {r["error"] for r in rows} == {"IndexError"}
    finally:
        tally.close()


def test_async_calls_copy_on_the_loop_without_waiting_for_the_copy():
    tally, chat = shadowed(FakeListChatModel(responses=["good too"], sleep=0.4),
                           background=True)

    async def go() -> tuple[float, bool]:
        t0 = time.perf_counter()
        for _ in range(3):
            assert (await chat.ainvoke("q")).content == "good answer"
        took = time.perf_counter() - t0
        return took, await tally.aflush(10.0)

    try:
        took, flushed = asyncio.run(go())
        assert took < 0.6 and flushed  # three 0.4 s copies in the way would be 1.2 s
        rows = copies(tally)
        assert len(rows) == 3 and all(r["quality"] == 0.9 for r in rows)
    finally:
        tally.close()


def test_copies_obey_the_callers_rules():
    tally, chat = shadowed(FakeListChatModel(responses=["meh"]))
    try:
        chat.invoke("q", config={"metadata": {"tally": {**ENV, "allowed_models":
                                                         ["mid", "pricey"]}}})
        assert tally.flush(10.0) and copies(tally) == []  # the caller excluded 'cheap'
        chat.invoke("q")
        assert tally.flush(10.0) and len(copies(tally)) == 1
    finally:
        tally.close()


def test_an_org_whose_rules_forbid_the_candidate_gets_no_copy():
    from tally_core import ModelSpec, Tally

    tally = Tally([ModelSpec(name="cheap", provider="mistral", input_cost_per_mtok=0.1,
                             output_cost_per_mtok=0.4),
                   ModelSpec(name="pricey", provider="azure", input_cost_per_mtok=5,
                             output_cost_per_mtok=15)],
                  fallback="pricey", store=":memory:", seed=1, background=False,
                  org_policies={"eu": {"allowed_providers": ["azure"]}})
    tally.shadow("cheap", sample=1.0)
    chat = ChatTally(tally=tally, envelope={"task_type": "qa-simple", "org": "eu"},
                     scorer=score, models={"cheap": FakeListChatModel(responses=["meh"]),
                                           "pricey": FakeListChatModel(responses=["good"])})
    try:
        assert chat.invoke("q").content == "good"
        assert tally.flush(10.0) and copies(tally) == []
    finally:
        tally.close()


def test_the_agent_middleware_makes_copies_too():
    from langchain.agents import create_agent

    from tally_langchain import TallyMiddleware

    tally, chat = shadowed(FakeListChatModel(responses=["meh"]))
    models = dict(chat.models)
    agent = create_agent(models["pricey"], middleware=[
        TallyMiddleware(tally, models, envelope=ENV, scorer=score)])
    try:
        for _ in range(3):
            out = agent.invoke({"messages": [("user", "2 + 2?")]})
            assert out["messages"][-1].content == "good answer"
        assert tally.flush(10.0)
        rows = copies(tally)
        assert len(rows) == 3 and all(r["quality"] == 0.2 for r in rows)
    finally:
        tally.close()


def test_a_call_with_tools_is_copied_with_the_same_tools_bound():
    from langchain_core.tools import tool

    from tests.langchain_fakes import FakeChild

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    cand = FakeChild(model="cheap")
    tally, chat = shadowed(FakeListChatModel(responses=["unused"]))
    chat = ChatTally(tally=tally, envelope=ENV, models={
        "cheap": cand, "mid": FakeChild(model="mid"), "pricey": FakeChild(model="pricey")})
    try:
        answer = chat.bind_tools([add]).invoke("add 2 and 3")
        assert answer.tool_calls and answer.tool_calls[0]["name"] == "add"
        assert tally.flush(10.0)
        (row,) = copies(tally)
        assert row["model"] == "cheap" and row["success"] == 1
        (call,) = cand.calls  # the copy reached the candidate with the tool bound
        assert [t["function"]["name"] for t in call["tools"]] == ["add"]
    finally:
        tally.close()
