"""Offline fake chat models and a Tally over them, for the LangChain tests."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from tally_core import ModelSpec, Tally

PRICES = {  # name -> (input, output) USD per million tokens
    "cheap": (0.1, 0.4),
    "mid": (1.0, 4.0),
    "pricey": (5.0, 15.0),
}


def specs(names: Sequence[str] = tuple(PRICES)) -> list[ModelSpec]:
    return [
        ModelSpec(
            name=n,
            input_cost_per_mtok=PRICES[n][0],
            output_cost_per_mtok=PRICES[n][1],
            context_window=128_000,
            supports_tools=True,
        )
        for n in names
    ]


def make_tally(names: Sequence[str] = tuple(PRICES), seed: int = 7, **kw: Any) -> Tally:
    kw.setdefault("background", False)
    return Tally(specs(names), fallback="pricey", store=":memory:", seed=seed, **kw)


class FakeChild(GenericFakeChatModel):
    """A fake provider model, as a real one behaves with stream usage on.

    Replies with ``reply`` (or the next of ``messages``), reports
    ``usage_metadata`` on invoke and on the last stream chunk only, sets
    ``response_metadata["model_name"]``, answers with a tool call when tools
    are bound, and records the kwargs of every call in ``calls``.
    """

    model: str = "fake"
    reply: str | None = "hello world"
    tool_args: dict[str, Any] = Field(default_factory=dict)
    messages: Iterator[AIMessage | str] = Field(
        default_factory=lambda: itertools.repeat("unused")
    )
    calls: list[dict[str, Any]] = Field(default_factory=list, exclude=True)

    def bind_tools(
        self, tools, *, tool_choice=None, **kwargs
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _answer(self, messages: list[BaseMessage], stop, **kwargs: Any) -> AIMessage:
        self.calls.append({"stop": stop, **kwargs})
        tools = kwargs.get("tools") or []
        tin = count_tokens_approximately(messages)
        answered = bool(messages) and isinstance(messages[-1], ToolMessage)
        if tools and kwargs.get("tool_choice") != "none" and not answered:
            names = [t["function"]["name"] for t in tools]
            choice = kwargs.get("tool_choice")
            name = choice if choice in names else names[0]
            return AIMessage(
                content="",
                tool_calls=[{"name": name, "args": dict(self.tool_args), "id": "call_1",
                             "type": "tool_call"}],
                usage_metadata={"input_tokens": tin, "output_tokens": 7, "total_tokens": tin + 7},
                response_metadata={"model_name": self.model},
            )
        text = self.reply if self.reply is not None else str(next(self.messages))
        if stop:
            for s in stop:
                text = text.split(s)[0]
        tout = max(1, len(text.split()))
        return AIMessage(
            content=text,
            usage_metadata={"input_tokens": tin, "output_tokens": tout,
                            "total_tokens": tin + tout},
            response_metadata={"model_name": self.model},
        )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = self._answer(messages, stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> Iterator[ChatGenerationChunk]:
        msg = self._answer(messages, stop, **kwargs)
        if msg.tool_calls:
            tc = msg.tool_calls[0]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[
                {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc["id"], "index": 0}
            ]))
        else:
            words = str(msg.content).split(" ")
            for i, word in enumerate(words):
                yield ChatGenerationChunk(
                    message=AIMessageChunk(content=word if i == 0 else " " + word)
                )
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=msg.usage_metadata, chunk_position="last",
            response_metadata={"model_name": self.model},
        ))

    @property
    def _llm_type(self) -> str:
        return "fake-child"


class ProviderDown(RuntimeError):
    """What a provider SDK raises when the service is down."""


class FailingChild(FakeChild):
    """Raises ``ProviderDown`` on every call (invoke and stream)."""

    def _answer(self, messages, stop, **kwargs):
        self.calls.append(kwargs)
        raise ProviderDown("service unavailable for prompt: SECRET-PROMPT-TEXT")


class PlainChild(GenericFakeChatModel):
    """A child without tool calling (no bind_tools)."""

    model: str = "plain"
    messages: Iterator[AIMessage | str] = Field(
        default_factory=lambda: itertools.repeat("plain answer")
    )


def children(**overrides: Any) -> dict[str, Any]:
    """One FakeChild per pool model, answering with its own name."""
    out: dict[str, Any] = {n: FakeChild(model=n, reply=f"answer from {n}") for n in PRICES}
    out.update(overrides)
    return out


class StepChild(FakeChild):
    """An agent's model: calls each bound tool once, in order, then answers.

    So a run with n tools makes n + 1 model calls.
    """

    def _answer(self, messages: list[BaseMessage], stop, **kwargs: Any) -> AIMessage:
        tools = kwargs.get("tools") or []
        done = sum(1 for m in messages if isinstance(m, ToolMessage))
        if done >= len(tools):
            return super()._answer(messages, stop, **{k: v for k, v in kwargs.items()
                                                      if k != "tools"})
        self.calls.append({"stop": stop, **kwargs})
        tin = count_tokens_approximately(messages)
        name = tools[done]["function"]["name"]
        return AIMessage(
            content="",
            tool_calls=[{"name": name, "args": dict(self.tool_args), "id": f"call_{done}",
                         "type": "tool_call"}],
            usage_metadata={"input_tokens": tin, "output_tokens": 7, "total_tokens": tin + 7},
            response_metadata={"model_name": self.model},
        )


class FailingStepChild(StepChild):
    """Raises ``ProviderDown`` on every call."""

    def _answer(self, messages, stop, **kwargs):
        self.calls.append(kwargs)
        raise ProviderDown("service unavailable for prompt: SECRET-PROMPT-TEXT")


class FlakyStepChild(StepChild):
    """Raises ``ProviderDown`` on its first ``failures`` calls, then works."""

    failures: int = 1

    def _answer(self, messages, stop, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            self.calls.append(kwargs)
            raise ProviderDown("rate limited")
        return super()._answer(messages, stop, **kwargs)


def agent_children(**overrides: Any) -> dict[str, Any]:
    """One StepChild per pool model, answering with its own name."""
    out: dict[str, Any] = {n: StepChild(model=n, reply=f"answer from {n}") for n in PRICES}
    out.update(overrides)
    return out
