"""ChatTally: routing, delegation, telemetry, tools, structured output, fail-open."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from tally_core import Envelope, InvalidFieldError
from tally_langchain import ChatTally, collect_decisions
from tests.langchain_fakes import (
    FailingChild,
    FakeChild,
    PlainChild,
    ProviderDown,
    children,
    make_tally,
)


class Person(BaseModel):
    """A person."""

    name: str
    age: int


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Recorder(BaseCallbackHandler):
    """Records chat-model and chain starts with their parents and metadata."""

    def __init__(self) -> None:
        self.chat: list[dict[str, Any]] = []
        self.chains: list[dict[str, Any]] = []
        self.ends = 0

    def on_chat_model_start(self, serialized, messages, *, run_id: UUID,
                            parent_run_id: UUID | None = None, metadata=None, **kw: Any) -> None:
        self.chat.append({"run_id": run_id, "parent": parent_run_id, "metadata": metadata or {},
                          "name": (serialized.get("id") or ["?"])[-1]})

    def on_chain_start(self, serialized, inputs, *, run_id: UUID,
                       parent_run_id: UUID | None = None, **kw: Any) -> None:
        self.chains.append({"run_id": run_id, "parent": parent_run_id, "name": kw.get("name")})

    def on_llm_end(self, response, **kw: Any) -> None:
        self.ends += 1


@pytest.fixture
def tally():
    t = make_tally()
    yield t
    t.close()


@pytest.fixture
def chat(tally):
    return ChatTally(tally=tally, models=children(), envelope={"task_type": "summarisation"})


def rows(tally) -> list[dict[str, Any]]:
    assert tally.flush(5.0)
    return list(tally.ledger.rows())


# -- construction ----------------------------------------------------------------


def test_models_by_name_or_as_a_list(tally):
    kids = children()
    listed = ChatTally(tally=tally, models=list(kids.values()))
    assert sorted(listed.models) == sorted(kids)


def test_a_child_outside_the_pool_is_a_clear_error(tally):
    with pytest.raises(InvalidFieldError) as err:
        ChatTally(tally=tally, models={**children(), "gpt-5-typo": FakeChild()})
    assert err.value.field == "models"
    assert "gpt-5-typo" in str(err.value)


def test_the_fallback_needs_a_child(tally):
    kids = children()
    del kids["pricey"]
    with pytest.raises(InvalidFieldError, match="fallback 'pricey'"):
        ChatTally(tally=tally, models=kids)


def test_a_bad_default_envelope_fails_at_construction_naming_the_field(tally):
    with pytest.raises(InvalidFieldError) as err:
        ChatTally(tally=tally, models=children(), envelope={"task_type": "qa", "colour": "red"})
    assert err.value.field == "colour"
    with pytest.raises(InvalidFieldError) as err:
        ChatTally(tally=tally, models=children(), envelope={"structure_type": "poem"})
    assert err.value.field == "structure_type"


def test_an_envelope_object_is_accepted(tally):
    chat = ChatTally(tally=tally, models=children(), envelope=Envelope(task_type="qa"))
    chat.invoke("hi")
    assert rows(tally)[0]["task_type"] == "qa-simple"


def test_not_a_tally_is_rejected():
    with pytest.raises(InvalidFieldError) as err:
        ChatTally(tally="tally", models=children())
    assert err.value.field == "tally"


# -- routing follows the decision; telemetry joins by id -----------------------------


def test_each_call_goes_to_the_model_tally_chose(tally, chat, monkeypatch):
    decisions = []
    route = tally.route

    def spy(env=None, **kw):
        d = route(env, **kw)
        decisions.append(d)
        return d

    monkeypatch.setattr(tally, "route", spy)
    served = []
    for i in range(30):
        msg = chat.invoke(f"question {i}")
        assert msg.content == f"answer from {decisions[-1].model}"
        assert msg.response_metadata["tally"]["decision_id"] == decisions[-1].decision_id
        assert msg.response_metadata["tally"]["model"] == decisions[-1].model
        served.append(decisions[-1].model)
    assert len(set(served)) > 1  # calibration spreads calls over the pool
    by_id = {r["decision_id"]: r for r in rows(tally)}
    for d in decisions:
        assert by_id[d.decision_id]["model"] == d.model
        assert by_id[d.decision_id]["phase"] == d.phase


def test_invoke_telemetry_has_tokens_latency_and_success(tally, chat):
    msg = chat.invoke([SystemMessage("be brief"), HumanMessage("summarise this")])
    (row,) = rows(tally)
    assert row["decision_id"] == msg.response_metadata["tally"]["decision_id"]
    assert row["task_type"] == "summarisation"
    assert row["input_tokens"] == msg.usage_metadata["input_tokens"]
    assert row["output_tokens"] == msg.usage_metadata["output_tokens"]
    assert row["latency_ms"] is not None and row["latency_ms"] >= 0
    assert row["success"] == 1 and row["error"] is None
    assert row["quality"] == 1.0  # success alone, no scorer
    assert row["cost_usd"] > 0


def test_stream_tokens_are_counted_once(tally, chat):
    chunks = list(chat.stream("summarise this please"))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.usage_metadata["output_tokens"] == 3  # "answer from <model>", not doubled
    assert merged.response_metadata["tally"]["decision_id"]
    (row,) = rows(tally)
    assert row["input_tokens"] == merged.usage_metadata["input_tokens"]
    assert row["output_tokens"] == merged.usage_metadata["output_tokens"]


def test_one_chat_model_run_per_call_so_usage_handlers_count_once(chat):
    for call in (
        lambda: chat.invoke("hello"),
        lambda: list(chat.stream("hello")),
        lambda: asyncio.run(chat.ainvoke("hello")),
    ):
        with get_usage_metadata_callback() as cb:
            msg = call()
        if isinstance(msg, list):
            msg = sum(msg[1:], msg[0])
        (usage,) = cb.usage_metadata.values()
        assert usage["total_tokens"] == msg.usage_metadata["total_tokens"]


def test_one_run_per_call_is_chattallys_own_with_the_callers_metadata(chat):
    rec = Recorder()
    msg = chat.invoke("hello", {"callbacks": [rec], "tags": ["mine"], "metadata": {"k": 1}})
    (run,) = rec.chat
    assert run["name"] == "ChatTally" and run["parent"] is None
    assert run["metadata"]["k"] == 1
    assert rec.chains == [] and rec.ends == 1
    assert msg.response_metadata["tally"]["decision_id"]
    # The routed child answered, and callers reading model_name see it.
    assert msg.content == f"answer from {msg.response_metadata['tally']['model']}"
    assert msg.response_metadata["model_name"] == msg.response_metadata["tally"]["model"]


def test_chattally_own_callbacks_see_the_call(tally):
    rec = Recorder()
    chat = ChatTally(tally=tally, models=children(), callbacks=[rec])
    chat.invoke("hello")
    list(chat.stream("hello"))
    assert len(rec.chat) == 2 and rec.ends == 2


def test_chattally_overrides_only_what_langchain_asks():
    from langchain_core.language_models import BaseChatModel

    public = ("invoke", "ainvoke", "stream", "astream", "batch", "abatch",
              "generate", "agenerate", "stream_events", "astream_events")
    assert [m for m in public if getattr(ChatTally, m) is not getattr(BaseChatModel, m)] == []
    own = {m for m in ("_generate", "_agenerate", "_stream", "_astream")
           if getattr(ChatTally, m) is not getattr(BaseChatModel, m)}
    assert own == {"_generate", "_agenerate", "_stream", "_astream"}


def test_async_paths(tally, chat):
    async def go():
        msg = await chat.ainvoke("hello")
        chunks = [c async for c in chat.astream("hello")]
        outs = await chat.abatch(["a", "b"])
        return msg, chunks, outs

    msg, chunks, outs = asyncio.run(go())
    assert msg.content.startswith("answer from")
    assert "".join(c.content for c in chunks).startswith("answer from")
    assert len(outs) == 2
    got = rows(tally)
    assert len(got) == 4 and all(r["success"] == 1 for r in got)
    assert all(r["output_tokens"] == 3 for r in got)


def test_batch_routes_each_input(tally, chat):
    with collect_decisions() as decisions:
        outs = chat.batch(["a", "b", "c"])
    ids = {o.response_metadata["tally"]["decision_id"] for o in outs}
    assert ids == {d.decision_id for d in decisions} and len(ids) == 3
    assert {r["decision_id"] for r in rows(tally)} == ids


def test_stop_reaches_the_child(tally):
    kids = children()
    chat = ChatTally(tally=tally, models=kids, stop=["from"])
    assert chat.invoke("hi").content == "answer "
    assert chat.invoke("hi", stop=["swer"]).content == "an"


def test_legacy_generate_routes_and_records(tally, chat):
    result = chat.generate([[HumanMessage("hello")]])
    msg = result.generations[0][0].message
    assert msg.content.startswith("answer from")
    (row,) = rows(tally)
    assert row["decision_id"] == msg.response_metadata["tally"]["decision_id"]


# -- per-call envelope and inference -------------------------------------------------


def test_per_call_envelope_from_config_metadata(tally, chat):
    cfg = {"metadata": {"tally": {"task_type": "code-debug", "quality_floor": 0.7, "org": "acme"}}}
    chat.invoke("fix it", cfg)
    list(chat.stream("fix it", cfg))
    asyncio.run(chat.ainvoke("fix it", cfg))

    async def astream():
        return [c async for c in chat.astream("fix it", cfg)]

    asyncio.run(astream())
    got = rows(tally)
    assert [(r["task_type"], r["org"], r["quality_floor"]) for r in got] == [
        ("code-debug", "acme", 0.7)
    ] * 4


def test_task_type_is_inferred_from_the_messages_else_general(tally):
    chat = ChatTally(tally=tally, models=children())
    msg = chat.invoke("Translate 'good morning, how are you?' into Italian.")
    assert rows(tally)[0]["task_type"] == "translation"
    assert msg.response_metadata["tally"]["inferred"] == ["task_type", "complexity"]
    given = ChatTally(tally=tally, models=children(), envelope={"task_type": "qa-simple"})
    msg = given.invoke("Translate 'good morning' into Italian.")
    assert rows(tally)[1]["task_type"] == "qa-simple"  # a given field always wins
    assert msg.response_metadata["tally"]["inferred"] == ["complexity"]
    off = ChatTally(tally=tally, models=children(), infer_envelope=False)
    off.invoke("Translate 'good morning' into Italian.")
    assert rows(tally)[2]["task_type"] == "general"


def test_context_length_is_inferred_from_the_messages(tally, chat):
    chat.invoke("word " * 400)
    (row,) = rows(tally)
    assert int(row["context_length"]) > 400


def test_explicit_fields_beat_inference(tally):
    chat = ChatTally(
        tally=tally, models=children(),
        envelope={"task_type": "extraction", "structure_type": "list", "context_length": "long"},
    )
    chat.with_structured_output(Person, include_raw=True).invoke("Ann is 3")
    (row,) = rows(tally)
    assert row["structure_type"] == "list" and row["context_length"] == "long"


def test_a_child_whose_profile_window_is_too_small_is_not_chosen(tally):
    kids = children(cheap=FakeChild(model="cheap", reply="answer from cheap",
                                    profile={"max_input_tokens": 50}))
    chat = ChatTally(tally=tally, models=kids, envelope={"task_type": "summarisation"})
    served = {chat.invoke("word " * 300).response_metadata["tally"]["model"] for _ in range(20)}
    assert "cheap" not in served
    assert "cheap" in {chat.invoke("short").response_metadata["tally"]["model"] for _ in range(20)}


# -- tools and structured output --------------------------------------------------------


def test_bind_tools_reaches_the_chosen_child(tally):
    kids = children()
    for k in kids.values():
        k.tool_args = {"a": 1, "b": 2}
    chat = ChatTally(tally=tally, models=kids)
    bound = chat.bind_tools([add], tool_choice="add")
    msg = bound.invoke("add 1 and 2")
    assert msg.tool_calls == [{"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1",
                               "type": "tool_call"}]
    child = kids[msg.response_metadata["tally"]["model"]]
    assert child.calls[-1]["tools"][0]["function"]["name"] == "add"  # converted by the child
    assert child.calls[-1]["tool_choice"] == "add"
    merged = None
    for c in bound.stream("add 1 and 2"):
        merged = c if merged is None else merged + c
    assert merged.tool_calls[0]["args"] == {"a": 1, "b": 2}
    got = rows(tally)
    assert [r["tools_used"] for r in got] == [1, 1]
    assert got[1]["output_tokens"] == 7


def test_tools_route_only_to_children_that_can_call_tools(tally):
    kids = children(cheap=PlainChild(model="cheap"))
    chat = ChatTally(tally=tally, models=kids)
    assert chat.invoke("hi").response_metadata["tally"]["model"] in kids  # plain calls: any child
    bound = chat.bind_tools([add])
    served = {bound.invoke("add").response_metadata["tally"]["model"] for _ in range(15)}
    assert served and "cheap" not in served


def test_bind_tools_extra_arguments_reach_the_child_bind_tools(tally, monkeypatch):
    seen = {}
    original = FakeChild.bind_tools

    def spy(self, tools, *, tool_choice=None, **kwargs):
        seen.update(kwargs)
        return original(self, tools, tool_choice=tool_choice)

    monkeypatch.setattr(FakeChild, "bind_tools", spy)
    chat = ChatTally(tally=tally, models=children())
    chat.bind_tools([add], parallel_tool_calls=False).invoke("x")
    assert seen["parallel_tool_calls"] is False


def test_with_structured_output(tally):
    kids = children()
    for k in kids.values():
        k.tool_args = {"name": "Ann", "age": 3}
    chat = ChatTally(tally=tally, models=kids, envelope={"task_type": "extraction"})
    assert chat.with_structured_output(Person).invoke("Ann is 3") == Person(name="Ann", age=3)
    out = chat.with_structured_output(Person, include_raw=True).invoke("Ann is 3")
    assert out["parsed"] == Person(name="Ann", age=3) and out["parsing_error"] is None
    assert out["raw"].response_metadata["tally"]["decision_id"]
    streamed = list(chat.with_structured_output(Person).stream("Ann is 3"))
    assert streamed[-1] == Person(name="Ann", age=3)
    got = rows(tally)
    assert [r["structure_type"] for r in got] == ["json"] * 3


def test_structured_output_parse_errors_surface_with_include_raw(tally):
    kids = children()
    for k in kids.values():
        k.tool_args = {"name": "Ann", "age": "not a number"}
    chat = ChatTally(tally=tally, models=kids)
    out = chat.with_structured_output(Person, include_raw=True).invoke("x")
    assert out["parsed"] is None and out["parsing_error"] is not None
    assert rows(tally)[0]["success"] == 1  # the model answered; the scorer judges quality


def test_model_keyword_pins_the_child(tally, chat):
    msg = chat.invoke("hi", model="mid")
    assert msg.content == "answer from mid"
    assert msg.response_metadata["model_name"] == "mid"
    assert rows(tally)[0]["model"] == "mid"
    with pytest.raises(ValueError, match="not one of"):
        chat.invoke("hi", model="nope")


# -- errors ------------------------------------------------------------------------------


def test_a_failing_child_is_recorded_and_the_error_reaches_the_caller(tally):
    kids = {n: FailingChild(model=n) for n in ("cheap", "mid", "pricey")}
    chat = ChatTally(tally=tally, models=kids)
    with pytest.raises(ProviderDown):
        chat.invoke("SECRET-PROMPT-TEXT")
    with pytest.raises(ProviderDown):
        list(chat.stream("SECRET-PROMPT-TEXT"))
    with pytest.raises(ProviderDown):
        asyncio.run(chat.ainvoke("SECRET-PROMPT-TEXT"))
    got = rows(tally)
    assert [(r["success"], r["error"]) for r in got] == [(0, "ProviderDown")] * 3
    assert all(r["decision_id"] for r in got)
    assert "SECRET" not in repr(got)


def test_stopping_a_stream_early_records_the_call_without_a_verdict(tally, chat):
    stream = chat.stream("hello")
    next(stream)
    stream.close()
    (row,) = rows(tally)
    assert row["error"] is None and row["quality"] is None


# -- fail open ------------------------------------------------------------------------------


def test_routing_failure_falls_back_and_logs_once(tally, chat, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("store exploded")

    monkeypatch.setattr(tally, "route", broken)
    with caplog.at_level(logging.WARNING, logger="tally"):
        first = chat.invoke("hi")
        second = list(chat.stream("hi"))
        third = asyncio.run(chat.ainvoke("hi"))
    assert first.content == third.content == "answer from pricey"
    assert first.response_metadata["tally"] == {
        "decision_id": None, "model": "pricey", "phase": "fallback", "routed": False
    }
    assert "".join(c.content for c in second) == "answer from pricey"
    warnings = [r for r in caplog.records if "routing failed" in r.getMessage()]
    assert len(warnings) == 1
    got = rows(tally)
    assert [(r["model"], r["task_type"], r["decision_id"]) for r in got] == [
        ("pricey", "summarisation", None)
    ] * 3


def test_a_bad_per_call_envelope_fails_open(tally, chat):
    msg = chat.invoke("hi", {"metadata": {"tally": {"quality_floor": 7}}})
    assert msg.content == "answer from pricey"
    msg = chat.invoke("hi", {"metadata": {"tally": 42}})
    assert msg.content == "answer from pricey"


def test_per_call_task_type_alone(tally, chat):
    chat.invoke("hi", {"metadata": {"tally": "code-review"}})
    assert rows(tally)[0]["task_type"] == "code-review"


def test_fail_open_respects_allowed_models(tally, chat, monkeypatch):
    monkeypatch.setattr(tally, "route", lambda *a, **k: 1 / 0)
    msg = chat.invoke("hi", {"metadata": {"tally": {"allowed_models": ["mid"]}}})
    assert msg.content == "answer from mid"


def test_a_closed_tally_never_breaks_the_chain(tally, chat):
    tally.close()
    assert chat.invoke("hi").content == "answer from pricey"
    assert "".join(c.content for c in chat.stream("hi")) == "answer from pricey"


# -- quality -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "quality"), [(0.25, 0.25), (True, 1.0), (False, 0.0), (None, 1.0)]
)
def test_scorer_sets_quality(tally, verdict, quality):
    seen = []

    def scorer(messages, message):
        seen.append((messages[-1].content, message.content))
        return verdict

    chat = ChatTally(tally=tally, models=children(), scorer=scorer)
    chat.invoke("q1")
    list(chat.stream("q2"))
    got = rows(tally)
    assert [r["quality"] for r in got] == [quality, quality]
    assert seen[0][0] == "q1" and seen[0][1].startswith("answer from")
    assert seen[1][0] == "q2" and seen[1][1].startswith("answer from")  # the merged stream


def test_a_raising_or_silly_scorer_never_breaks_the_call(tally, caplog):
    chat = ChatTally(tally=tally, models=children(), scorer=lambda m, a: 1 / 0)
    with caplog.at_level(logging.WARNING, logger="tally"):
        assert chat.invoke("hi").content.startswith("answer")
        assert chat.invoke("hi").content.startswith("answer")
    assert len([r for r in caplog.records if "scorer raised" in r.getMessage()]) == 1
    chat2 = ChatTally(tally=tally, models=children(), scorer=lambda m, a: 7)
    chat2.invoke("hi")
    # counted by success alone, as without a scorer
    assert [(r["success"], r["quality"]) for r in rows(tally)] == [(1, 1.0)] * 3


def test_an_async_scorer_is_awaited(tally):
    async def scorer(messages, message):
        await asyncio.sleep(0)
        return 0.4

    chat = ChatTally(tally=tally, models=children(), scorer=scorer)

    async def go():
        await chat.ainvoke("a")
        [c async for c in chat.astream("b")]

    asyncio.run(go())
    chat.invoke("c")  # sync code, no running loop: run to completion
    assert [r["quality"] for r in rows(tally)] == [0.4, 0.4, 0.4]


def test_late_feedback_joins_by_the_decision_id_on_the_message(tally, chat):
    msg = chat.invoke("hi")
    tally.flush()
    tally.feedback(msg.response_metadata["tally"]["decision_id"], quality=0.2)
    (row,) = rows(tally)
    assert row["quality"] == 0.2


def test_collect_decisions_for_chains_that_return_strings(tally, chat):
    from langchain_core.output_parsers import StrOutputParser

    chain = chat | StrOutputParser()
    with collect_decisions() as decisions:
        chain.batch(["a", "b"])
        asyncio.run(chain.ainvoke("c"))
    assert len(decisions) == 3
    assert {r["decision_id"] for r in rows(tally)} == {d.decision_id for d in decisions}


def test_generic_fake_children_without_usage(tally):
    kids = {n: GenericFakeChatModel(messages=iter([AIMessage(f"hi {n}")] * 5))
            for n in ("cheap", "mid", "pricey")}
    chat = ChatTally(tally=tally, models=kids)
    assert chat.invoke("x").content.startswith("hi ")
    (row,) = rows(tally)
    assert row["input_tokens"] is None and row["success"] == 1


def test_called_without_config_inside_a_runnable_it_nests_in_the_enclosing_run(tally):
    from langchain_core.runnables import RunnableLambda

    outer, own = Recorder(), Recorder()
    chat = ChatTally(tally=tally, models=children(), callbacks=[own])
    wrapper = RunnableLambda(lambda text: chat.invoke(text))  # no config passed on
    wrapper.invoke("hi", {"callbacks": [outer]})
    (lam,) = [c for c in outer.chains if c["name"] == "RunnableLambda"]
    assert len(outer.chat) == 1 and outer.chat[0]["parent"] == lam["run_id"]
    assert outer.chat[0]["name"] == "ChatTally"
    assert len(own.chat) == 1


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_stream_events_v3_routes_and_records_once(tally, chat):
    from tally_langchain import TallyCallbackHandler

    handler = TallyCallbackHandler(tally)
    cfg = {"callbacks": [handler], "metadata": {"tally": "code-debug"}}
    stream = chat.stream_events("hi", cfg, version="v3")
    assert stream.output.text.startswith("answer from")
    (row,) = rows(tally)
    assert row["task_type"] == "code-debug" and row["decision_id"] and row["output_tokens"] == 3


# -- from_models: init_chat_model children, LiteLLM-style pool names ---------------------


def test_from_models_builds_init_chat_model_children_and_a_priced_pool(monkeypatch, tmp_path):
    pytest.importorskip("langchain.chat_models")
    import langchain.chat_models as lc_chat_models

    built = []

    def fake_init(model, *, model_provider=None, **kw):
        built.append((model_provider, model))
        return FakeChild(model=model, reply=f"answer from {model}")

    monkeypatch.setattr(lc_chat_models, "init_chat_model", fake_init)
    monkeypatch.setenv("TALLY_HOME", str(tmp_path))
    chat = ChatTally.from_models(
        ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "openai:gpt-4o"],
        fallback="openai:gpt-4o",
        envelope={"task_type": "summarisation"},
    )
    assert built == [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
                     ("openai", "gpt-4o")]
    assert sorted(chat.models) == [
        "anthropic/claude-sonnet-4-5", "openai/gpt-4o", "openai/gpt-4o-mini"]
    assert chat.tally.fallback == "openai/gpt-4o"
    # priced from LiteLLM's map, cheapest first
    prices = {n: chat.tally.catalog[n].input_cost_per_mtok for n in chat.models}
    assert prices["openai/gpt-4o-mini"] < prices["openai/gpt-4o"]
    msg = chat.invoke("summarise this")
    assert msg.content == f"answer from {msg.response_metadata['tally']['model'].split('/')[1]}"
    chat.tally.close()


def test_from_models_says_what_to_install_and_names_bad_input(tally):
    pytest.importorskip("langchain.chat_models")
    try:
        import langchain_openai  # noqa: F401
        pytest.skip("langchain-openai is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="'openai:gpt-4o-mini' needs its LangChain provider"):
        ChatTally.from_models(["openai:gpt-4o-mini"], tally=tally)
    with pytest.raises(InvalidFieldError, match="provider:model"):
        ChatTally.from_models(["gpt-4o-mini"], tally=tally)
    with pytest.raises(InvalidFieldError, match="models"):
        ChatTally.from_models("openai:gpt-4o", tally=tally)


def test_per_call_envelope_never_leaks_into_a_later_call(tally):
    chat = ChatTally(tally=tally, models=children(), envelope={"task_type": "summarisation"})
    chat.invoke("x", {"metadata": {"tally": "code-debug"}})
    list(chat.stream("y"))  # no per-call envelope: the default applies
    chat.callbacks = None  # even without ChatTally's run-start handler
    list(chat.stream("z"))
    assert [r["task_type"] for r in rows(tally)] == ["code-debug", "summarisation",
                                                      "summarisation"]
