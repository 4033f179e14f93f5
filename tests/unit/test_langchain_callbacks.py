"""TallyCallbackHandler and auto_telemetry on plain LangChain chat models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate

from tally_core import InvalidFieldError
from tally_langchain import ChatTally, TallyCallbackHandler, auto_telemetry
from tests.langchain_fakes import FailingChild, FakeChild, ProviderDown, children, make_tally


@pytest.fixture
def tally():
    t = make_tally()
    yield t
    t.close()


def rows(tally) -> list[dict[str, Any]]:
    assert tally.flush(5.0)
    return list(tally.ledger.rows())


def test_records_a_plain_chat_model_call(tally):
    handler = TallyCallbackHandler(tally, task_type="summarization")
    model = FakeChild(model="cheap", reply="a short summary")
    msg = model.invoke("summarise", {"callbacks": [handler]})
    (row,) = rows(tally)
    assert row["model"] == "cheap"  # from ls_model_name
    assert row["task_type"] == "summarisation"
    assert row["decision_id"] is None
    assert row["input_tokens"] == msg.usage_metadata["input_tokens"]
    assert row["output_tokens"] == msg.usage_metadata["output_tokens"] == 3
    assert row["success"] == 1 and row["latency_ms"] >= 0


def test_streaming_tokens_counted_once(tally):
    handler = TallyCallbackHandler(tally)
    model = FakeChild(model="mid", reply="one two three four")
    list(model.stream("x", {"callbacks": [handler]}))

    async def astream():
        return [c async for c in model.astream("x", {"callbacks": [handler]})]

    asyncio.run(astream())
    got = rows(tally)
    assert [r["output_tokens"] for r in got] == [4, 4]
    assert [r["task_type"] for r in got] == ["general", "general"]


def test_inside_a_chain_with_per_call_task_type(tally):
    handler = TallyCallbackHandler(tally, task_type="conversation")
    chain = (
        ChatPromptTemplate.from_messages([("user", "{q}")])
        | FakeChild(model="cheap")
        | StrOutputParser()
    )
    chain.invoke({"q": "hi"}, {"callbacks": [handler]})
    chain.invoke({"q": "hi"}, {"callbacks": [handler],
                               "metadata": {"tally": {"task_type": "code-debug", "org": "acme"}}})
    chain.batch([{"q": "a"}, {"q": "b"}], {"callbacks": [handler]})
    chain.invoke({"q": "hi"}, {"callbacks": [handler], "metadata": {"tally": "translation"}})
    got = rows(tally)
    assert [(r["task_type"], r["org"]) for r in got] == [
        ("conversation", "default"), ("code-debug", "acme"),
        ("conversation", "default"), ("conversation", "default"),
        ("translation", "default"),
    ]


def test_errors_are_recorded_by_class_never_by_message(tally):
    handler = TallyCallbackHandler(tally, task_type="qa")
    model = FailingChild(model="mid")
    with pytest.raises(ProviderDown):
        model.invoke("SECRET-PROMPT-TEXT", {"callbacks": [handler]})
    with pytest.raises(ProviderDown):
        list(model.stream("SECRET-PROMPT-TEXT", {"callbacks": [handler]}))
    got = rows(tally)
    assert [(r["model"], r["success"], r["error"]) for r in got] == [("mid", 0, "ProviderDown")] * 2
    assert "SECRET" not in repr(got)


def test_model_name_override_and_class_name_fallback(tally):
    FakeListChatModel(responses=["x"]).invoke(
        "q", {"callbacks": [TallyCallbackHandler(tally, model="cheap")]}
    )
    FakeListChatModel(responses=["x"]).invoke("q", {"callbacks": [TallyCallbackHandler(tally)]})
    assert [r["model"] for r in rows(tally)] == ["cheap", "FakeListChatModel"]


def test_legacy_token_usage_in_llm_output(tally):
    class Legacy(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "legacy"

        def _generate(self, messages, stop=None, run_manager=None, **kw):
            return ChatResult(
                generations=[ChatGeneration(message=AIMessage("ok"))],
                llm_output={"token_usage": {"prompt_tokens": 11, "completion_tokens": 5}},
            )

    Legacy().invoke("x", {"callbacks": [TallyCallbackHandler(tally, model="mid")]})
    (row,) = rows(tally)
    assert (row["input_tokens"], row["output_tokens"]) == (11, 5)


def test_scorer(tally):
    handler = TallyCallbackHandler(
        tally, scorer=lambda messages, msg: 0.5 if "summary" in msg.content else 0.0
    )
    FakeChild(model="cheap", reply="a summary").invoke("x", {"callbacks": [handler]})
    list(FakeChild(model="cheap", reply="a summary").stream("x", {"callbacks": [handler]}))
    FakeChild(model="cheap", reply="nope").invoke("x", {"callbacks": [handler]})
    assert [r["quality"] for r in rows(tally)] == [0.5, 0.5, 0.0]


def test_chattally_calls_are_not_recorded_twice(tally):
    handler = TallyCallbackHandler(tally)
    chat = ChatTally(tally=tally, models=children())
    chat.invoke("x", {"callbacks": [handler]})
    list(chat.stream("x", {"callbacks": [handler]}))
    chat.generate([[HumanMessage("x")]], callbacks=[handler])  # legacy path: two LLM runs
    got = rows(tally)
    assert len(got) == 3 and all(r["decision_id"] for r in got)


def test_never_raises_into_the_chain(tally):
    handler = TallyCallbackHandler(tally)
    tally.close()
    assert FakeChild(model="cheap").invoke("x", {"callbacks": [handler]}).content == "hello world"
    handler.on_llm_end(None, run_id=None)  # an end it never saw: ignored


def test_bad_arguments():
    with pytest.raises(InvalidFieldError) as err:
        TallyCallbackHandler("tally")
    assert err.value.field == "tally"
    with pytest.raises(InvalidFieldError) as err:
        TallyCallbackHandler(make_tally(), task_type="not a valid task type!")
    assert err.value.field == "task_type"


def test_handler_is_inline_and_bounded(tally):
    handler = TallyCallbackHandler(tally)
    assert handler.run_inline is True
    from uuid import uuid4

    for _ in range(10_050):  # starts that never end do not grow without bound
        handler.on_chat_model_start({}, [[]], run_id=uuid4(), metadata={"ls_model_name": "x"})
    assert len(handler._runs) <= 10_000


# -- auto_telemetry -------------------------------------------------------------------


def test_auto_telemetry_attaches_to_every_run_in_the_block(tally):
    model = FakeChild(model="cheap")
    with auto_telemetry(tally, task_type="translation") as handler:
        assert isinstance(handler, TallyCallbackHandler)
        model.invoke("a")
        list(model.stream("b"))
        asyncio.run(model.ainvoke("c"))
        model.batch(["d", "e"])  # thread pool
        (ChatPromptTemplate.from_messages([("user", "{q}")]) | model).invoke({"q": "f"})
        model.invoke("g", {"callbacks": [handler]})  # passed explicitly too: not doubled
    model.invoke("after")  # outside the block: not recorded
    got = rows(tally)
    assert len(got) == 7
    assert {r["task_type"] for r in got} == {"translation"}


def test_auto_telemetry_without_with_and_stop(tally):
    model = FakeChild(model="cheap")
    auto = auto_telemetry(tally)
    model.invoke("a")
    auto.stop()
    auto.stop()  # idempotent
    model.invoke("b")
    assert len(rows(tally)) == 1


def test_auto_telemetry_and_chattally_do_not_double_count(tally):
    chat = ChatTally(tally=tally, models=children())
    with auto_telemetry(tally):
        chat.invoke("x")
        list(chat.stream("x"))
        FakeChild(model="mid").invoke("y")
    got = rows(tally)
    assert len(got) == 3
    assert sum(1 for r in got if r["decision_id"] is None) == 1
