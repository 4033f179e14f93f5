"""ChatTally(cascade=...): escalate inside one chat-model call while the answer fails checks."""

from __future__ import annotations

import asyncio

import pytest

from tally_core import NoCandidateError
from tally_core.cascade import Cascade, JsonValid, NonEmpty
from tally_langchain import ChatTally
from tests.langchain_fakes import FakeChild, make_tally, specs


def chat(replies: dict[str, str], **kw):
    tally = make_tally(**kw)
    models = {name: FakeChild(model=name, reply=reply) for name, reply in replies.items()}
    return tally, ChatTally(tally=tally, models=models, envelope={"task_type": "extraction"},
                            cascade=Cascade(checks=[JsonValid()], explore=0.0))


def ledger(tally):
    return [r for r in tally.ledger.rows() if "cascade" in (r["tags"] or ())]


def test_a_failing_cheap_answer_escalates_inside_one_call():
    tally, model = chat({"cheap": "not json", "mid": '{"a": 1}', "pricey": '{"a": 2}'})
    msg = model.invoke("extract a")
    assert msg.content == '{"a": 1}'
    info = msg.response_metadata["tally"]
    assert info["model"] == "mid" and info["cascade"]["tier"] == 1
    assert [a["passed"] for a in info["cascade"]["attempts"]] == [False, True]
    assert info["cascade"]["cost_usd"] == pytest.approx(
        sum(a["cost_usd"] for a in info["cascade"]["attempts"])) and info["cascade"]["cost_usd"] > 0
    rows = ledger(tally)
    assert sorted((r["model"], r["quality"]) for r in rows) == [("cheap", 0.0), ("mid", 1.0)]
    assert len({t for r in rows for t in r["tags"] if t.startswith("cascade:")}) == 1
    tally.close()


def test_async_and_streamed_calls_cascade_too():
    tally, model = chat({"cheap": "", "mid": "", "pricey": '{"ok": true}'},)

    async def go():
        return await model.ainvoke("extract")

    msg = asyncio.run(go())
    assert msg.content == '{"ok": true}' and msg.response_metadata["tally"]["cascade"]["tier"] == 2
    chunks = list(model.stream("extract"))
    assert "".join(c.content for c in chunks) == '{"ok": true}'
    assert len(ledger(tally)) == 6
    tally.close()


def test_after_learning_it_starts_above_a_child_that_keeps_failing():
    tally, model = chat({"cheap": '{"a": 1}', "mid": "nope", "pricey": '{"a": 1}'})
    model.cascade = Cascade(checks=[NonEmpty(min_chars=5), JsonValid()], tiers=["mid", "pricey"],
                            explore=0.0)
    entries = [model.invoke("x").response_metadata["tally"]["cascade"]["attempts"][0]["model"]
               for _ in range(12)]
    assert entries[0] == "mid" and entries[-1] == "pricey"
    tally.close()


def test_an_orgs_rules_are_never_failed_open_past():
    tally = make_tally(org_policies={"eu": {"allowed_models": ["nowhere-model"]}})
    models = {s.name: FakeChild(model=s.name, reply="hi") for s in specs()}
    model = ChatTally(tally=tally, models=models, envelope={"task_type": "qa-simple", "org": "eu"})
    with pytest.raises(NoCandidateError, match="'eu'"):
        model.invoke("hello")
    tally.close()
