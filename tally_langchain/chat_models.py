"""ChatTally: a LangChain chat model that routes each call through Tally.

ChatTally is built the way LangChain's partner chat models are: it overrides
``_generate`` and ``_stream`` (and their async twins) only, so ``invoke``,
``stream``, ``batch``, callbacks, caching and tracing are LangChain's own.
Each call builds an envelope (the shape of the task, never its content), asks
``tally.route()`` for a child model (``_routing.Pool``), and has that child
produce the answer inside ChatTally's run: one chat-model run per call.
When the call ends, ChatTally sends telemetry (tokens, latency, success or
the error's class, the scorer's quality) joined to the decision by id.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from tally_core import Envelope, InvalidFieldError, RouteDecision, Tally
from tally_core.cascade import Cascade, CascadeRun
from tally_langchain._common import (
    TALLY_MODEL_KEY,
    LogOnce,
    Scorer,
    aoutcome,
    outcome,
    result_tokens,
    usage_tokens,
)
from tally_langchain._routing import (
    Planned,
    Pool,
    envelope_dict,
    failed,
    invalid_field,
    ms_since,
    name_models,
    stamp,
    stamped,
)

__all__ = ["ChatTally", "collect_decisions"]

# Extra bind_tools() arguments (parallel_tool_calls, strict, ...) travel under
# this key so they reach the chosen child's bind_tools(), not its _generate().
_BIND_TOOLS_KWARGS = "tally_bind_tools_kwargs"
# with_structured_output's binding is marked so _generate sees it: BaseChatModel
# strips ls_structured_output_format (tracing only) before calling _generate.
_STRUCTURED = "tally_structured_output"
# Tracing-only keyword arguments BaseChatModel strips before _generate.
_TRACING_KWARGS = ("ls_structured_output_format", "structured_output_format")

_decision_sink: ContextVar[list[RouteDecision] | None] = ContextVar(
    "tally_langchain_decisions", default=None
)
# BaseChatModel.stream() calls _stream without the run manager, so the call's
# config metadata (the per-call envelope) is caught as ChatTally's run starts.
_UNSET: Any = object()  # no per-call envelope override
_run_metadata: ContextVar[dict[str, Any] | None] = ContextVar(
    "tally_langchain_run_metadata", default=None
)


@contextmanager
def collect_decisions() -> Iterator[list[RouteDecision]]:
    """Collect the decisions of every ChatTally call made inside the block.

    For chains whose output is not the message (``prompt | chat |
    StrOutputParser()``), this is how to get the decision id for late
    feedback. It follows LangChain's own context propagation, so calls
    in ``batch`` thread pools and asyncio tasks are collected too.

    >>> with collect_decisions() as decisions:
    ...     pass  # chain.invoke(...)
    >>> decisions
    []
    """
    sink: list[RouteDecision] = []
    token = _decision_sink.set(sink)
    try:
        yield sink
    finally:
        _decision_sink.reset(token)


class _RunStart(BaseCallbackHandler):
    """Catches the metadata of ChatTally's own run as it starts (see ``_run_metadata``)."""

    run_inline = True
    raise_error = False

    def __repr__(self) -> str:
        return "TallyRunStart()"

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = kwargs.get("invocation_params")
        if isinstance(params, Mapping) and params.get("_type") == "tally":
            _run_metadata.set(dict(metadata or {}))


_RUN_START = _RunStart()


@dataclass(slots=True)
class _Call:
    """One routed call: the plan, the child that answers, and how to call it."""

    planned: Planned
    child: BaseChatModel
    # The child's bound arguments (formatted tools, tool_choice) when it can be
    # called directly; None when its bind_tools() returned something else.
    kwargs: dict[str, Any] | None
    runnable: Runnable[LanguageModelInput, Any]
    stop: list[str] | None
    messages: list[BaseMessage]
    # Any child with this call's tools bound (for a shadow copy); None: no tools.
    bind: Callable[[str], Runnable[LanguageModelInput, Any]] | None = None


class ChatTally(BaseChatModel):
    """A chat model that routes each call to the cheapest child that is good enough.

    Put it anywhere a chat model goes: a chain, an agent, ``bind_tools``,
    ``with_structured_output``. Telemetry is automatic.

    Parameters
    ----------
    tally
        The ``Tally`` that routes and learns.
    models
        The child chat models, keyed by their name in the Tally pool
        (``{"gpt-4o-mini": ChatOpenAI(model="gpt-4o-mini"), ...}``), or a list
        of chat models named by their ``ls_model_name``. The fallback must be
        among them.
    envelope
        Default envelope fields (``{"task_type": "summarisation"}``). Per call,
        ``config={"metadata": {"tally": {...}}}`` overrides them (a mapping,
        an ``Envelope``, or just a task type). Without a task type, calls
        count as ``"general"``.
    scorer
        ``fn(messages, ai_message) -> float | bool | None`` grading each
        answer: a quality in 0-1, or pass/fail. It may be ``async`` (awaited
        on the async paths). It runs after the call, on the caller's thread
        or event loop, so keep it cheap. A call it does not grade (None, an
        error) counts by success alone -- quality 1 -- as does every call
        without a scorer, until ``tally.feedback(decision_id, quality=...)``
        replaces it.
    infer_envelope
        Fill fields the envelope leaves unset from the call: ``tools_used``
        from bound tools, ``structure_type="json"`` under
        ``with_structured_output``, ``context_length`` from the messages, and ``task_type`` and
        ``complexity`` read off the messages in process (``tally_core.infer``;
        never stored), listed in ``response_metadata["tally"]["inferred"]``.
        Given fields always win. False turns all of it off.
    stop
        Default stop sequences for calls that give none.
    cascade
        A ``tally_core.cascade.Cascade``: each call tries a cheap child first
        and escalates, inside the one chat-model call, while its answer fails
        the cascade's checks (the last tier's answer is accepted). Every tier's
        try is its own Tally decision, graded by the checks; the answer's
        ``response_metadata["tally"]["cascade"]`` says which tier answered,
        after how many tries, at what total cost. A cascade call answers in
        one chunk when streamed (checks need the whole answer).

    Sampling parameters (temperature, max tokens, timeouts, retries) belong
    on the child models. The chosen child answers inside ChatTally's own run
    (one chat-model run per call, so usage and tracing count it once):
    callbacks, cache and tags set on ChatTally apply; a child's own
    callbacks and cache do not, its rate limiter does.

    ``ChatTally.from_models(["openai:gpt-4o-mini", ...])`` builds the children
    with ``init_chat_model`` and the Tally pool from the same names.

    A per-call ``model="<name>"`` keyword pins the call to that child (still
    recorded as a Tally decision). The decision is on the returned message:
    ``message.response_metadata["tally"]`` holds ``decision_id``, ``model``,
    ``phase``, ``confidence`` and ``task_type`` (on the first chunk when
    streaming); ``collect_decisions()`` gathers them when the chain's output
    is not the message.

    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from tally_core import ModelSpec, Tally
    >>> tally = Tally([ModelSpec(name="small", input_cost_per_mtok=0.1, output_cost_per_mtok=0.4),
    ...                ModelSpec(name="large", input_cost_per_mtok=5, output_cost_per_mtok=15)],
    ...               fallback="large", store=":memory:", seed=0, background=False)
    >>> chat = ChatTally(tally=tally, envelope={"task_type": "qa-simple"},
    ...                  models={"small": FakeListChatModel(responses=["4"]),
    ...                          "large": FakeListChatModel(responses=["4"])})
    >>> chat.invoke("2 + 2?").content
    '4'
    >>> tally.close()
    """

    tally: Tally = Field(exclude=True)
    models: dict[str, BaseChatModel] = Field(exclude=True)
    envelope: dict[str, Any] = Field(default_factory=dict)
    scorer: Scorer | None = Field(default=None, exclude=True)
    infer_envelope: bool = True
    stop: list[str] | None = None
    cascade: Cascade | None = Field(default=None, exclude=True)

    _pool: Pool = PrivateAttr()
    _warn: LogOnce = PrivateAttr(default_factory=LogOnce)
    _bound: OrderedDict[tuple[str, int], tuple[Any, ...]] = PrivateAttr(
        default_factory=OrderedDict
    )
    _bound_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            raise invalid_field(exc, "ChatTally") from None

    # -- construction --------------------------------------------------------

    @field_validator("models", mode="before")
    @classmethod
    def _name_models(cls, value: Any) -> Any:
        return name_models(value)

    @model_validator(mode="after")
    def _check_pool(self) -> ChatTally:
        self._pool = Pool(self.tally, self.models, self.envelope, self._warn, self.infer_envelope)
        self.callbacks = _with_run_start(self.callbacks)
        return self

    @field_validator("envelope", mode="before")
    @classmethod
    def _envelope_dict(cls, value: Any) -> Any:
        if isinstance(value, Envelope):
            return value.model_dump(exclude_unset=True)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise InvalidFieldError(
                "envelope", f"must be a mapping or an Envelope, got {type(value).__name__}"
            )
        return dict(value)

    @classmethod
    def from_models(
        cls,
        models: Sequence[str],
        *,
        fallback: str | None = None,
        tally: Tally | None = None,
        **kwargs: Any,
    ) -> ChatTally:
        """A ChatTally over ``init_chat_model`` children, named LiteLLM-style.

        Each ``"provider:model"`` (``"openai:gpt-4o-mini"``) becomes a child
        built by LangChain's ``init_chat_model`` (its provider package must be
        installed) and the pool name ``"provider/model"``, which Tally prices
        from LiteLLM's price map. ``fallback`` is one of ``models``, in either
        spelling (default: the priciest). Pass ``tally`` to route with your own
        ``Tally`` (its pool must hold the names); other keyword arguments go
        to ``ChatTally``.
        """
        try:
            from langchain.chat_models import init_chat_model
        except ImportError as exc:
            raise ImportError(
                "ChatTally.from_models needs the 'langchain' package: "
                "pip install 'tally-router[langchain]'"
            ) from exc
        if isinstance(models, str) or not isinstance(models, Sequence) or not models:
            raise InvalidFieldError("models", "must be a non-empty list of 'provider:model' names")
        children: dict[str, BaseChatModel] = {}
        spelled: dict[str, str] = {}
        for spec in models:
            provider, sep, model = spec.partition(":") if isinstance(spec, str) else ("", "", "")
            if not sep or not provider or not model:
                raise InvalidFieldError(
                    "models", f"each model must be 'provider:model' (as init_chat_model takes), "
                    f"got {spec!r}"
                )
            name = f"{provider}/{model}"
            try:
                children[name] = init_chat_model(model, model_provider=provider)
            except ImportError as exc:
                raise ImportError(f"{spec!r} needs its LangChain provider package: {exc}") from exc
            spelled[spec] = spelled[name] = name
        if fallback is not None and fallback not in spelled:
            raise InvalidFieldError(
                "fallback", f"must be one of models, got {fallback!r}"
            )
        fb = spelled[fallback] if fallback is not None else None
        if tally is None:
            tally = Tally(list(children), fallback=fb)
        return cls(tally=tally, models=children, **kwargs)

    # -- LangChain identity --------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "tally"

    @property
    def _identifying_params(self) -> builtins.dict[str, Any]:
        return {"models": sorted(self.models), "fallback": self.tally.fallback}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="tally", ls_model_type="chat")
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else "tally"
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- tools ---------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[builtins.dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; the child chosen for each call converts them its own way.

        Calls with tools route only among children that can call tools.
        """
        bound: dict[str, Any] = {"tools": list(tools)}
        if tool_choice is not None:
            bound["tool_choice"] = tool_choice
        sof = kwargs.pop("ls_structured_output_format", None)
        if sof is not None:
            bound["ls_structured_output_format"] = sof
            bound[_STRUCTURED] = True
        if kwargs:
            bound[_BIND_TOOLS_KWARGS] = kwargs
        return self.bind(**bound)

    def _bind_child(
        self,
        name: str,
        tools: list[Any],
        tool_choice: Any,
        extra: Mapping[str, Any],
        sof: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        # A binding passes the same tools list on every call: convert once per
        # (child, binding), not once per call. The entry keeps the list alive,
        # so its id cannot be reused while cached.
        key = (name, id(tools))
        with self._bound_lock:
            hit = self._bound.get(key)
            if hit is not None and hit[0] is tools and hit[1:4] == (tool_choice, extra, sof):
                self._bound.move_to_end(key)
                return cast("Runnable[LanguageModelInput, Any]", hit[4])
        kw: dict[str, Any] = dict(extra)
        if tool_choice is not None:
            kw["tool_choice"] = tool_choice
        if sof is not None:
            kw["ls_structured_output_format"] = sof
        runnable = self.models[name].bind_tools(tools, **kw)
        with self._bound_lock:
            self._bound[key] = (tools, tool_choice, extra, sof, runnable)
            while len(self._bound) > 256:
                self._bound.popitem(last=False)
        return runnable

    # -- routing -------------------------------------------------------------

    def _route(
        self,
        messages: list[BaseMessage],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: Mapping[str, Any],
        stop: list[str] | None,
        per_call: Any = _UNSET,
    ) -> _Call:
        # Read once, then cleared: a value left over from an earlier call
        # must never reach a later one.
        caught = _run_metadata.get()
        if caught is not None:
            _run_metadata.set(None)
        metadata = run_manager.metadata if run_manager is not None else caught
        if per_call is not _UNSET:
            metadata = {"tally": per_call}
        kw = dict(kwargs)
        pin = kw.pop("model", None)
        if pin is not None and pin not in self.models:
            raise ValueError(
                f"model={pin!r} is not one of this ChatTally's models: "
                + ", ".join(sorted(self.models))
            )
        tools = kw.pop("tools", None) or None
        tool_choice = kw.pop("tool_choice", None) if tools else None
        extra = kw.pop(_BIND_TOOLS_KWARGS, None) or {}
        sof = kw.pop("ls_structured_output_format", None)
        structured = bool(kw.pop(_STRUCTURED, False)) or sof is not None
        planned = self._pool.plan(
            metadata.get("tally") if metadata else None,
            messages,
            tools=len(tools or ()),
            structured=structured,
            pin=pin,
        )
        if planned.decision is not None:
            sink = _decision_sink.get()
            if sink is not None:
                sink.append(planned.decision)
        child = self.models[planned.name]
        runnable: Runnable[LanguageModelInput, Any] = child
        bound: dict[str, Any] | None = {}
        if tools:
            runnable = self._bind_child(planned.name, tools, tool_choice, extra, sof)
            bound = _bound_kwargs(runnable, child)
        if bound is not None:
            for key in _TRACING_KWARGS:
                bound.pop(key, None)
            bound.update(kw)
        bind = None
        if tools:
            def bind(name: str) -> Runnable[LanguageModelInput, Any]:
                return self._bind_child(name, tools, tool_choice, extra, sof)

        return _Call(
            planned=planned,
            child=child,
            kwargs=bound,
            runnable=runnable,
            stop=stop if stop is not None else (self.stop or None),
            messages=messages,
            bind=bind,
        )

    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        # With a run manager (invoke, an agent's model call), _generate streams
        # the child itself and reports each token to that run; BaseChatModel
        # would call _stream without it, and without the call's metadata.
        if run_manager is not None:
            return False
        return super()._should_stream(async_api=async_api, **kwargs)

    def _streams(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        async_api: bool,
        kwargs: Mapping[str, Any],
    ) -> bool:
        return run_manager is not None and super()._should_stream(
            async_api=async_api, run_manager=run_manager, **kwargs
        )

    # -- telemetry -----------------------------------------------------------

    def _finish(
        self,
        call: _Call,
        latency_ms: float,
        fields: Mapping[str, Any],
        tokens: tuple[int | None, int | None],
    ) -> None:
        self._pool.finish(call.planned, latency_ms, fields, tokens)

    def _shadow(self, call: _Call, is_async: bool) -> None:
        """A background copy of an answered call to a shadow candidate, if one is drawn."""
        self._pool.shadow(call.planned, call.messages, self.scorer, bind=call.bind,
                          stop=call.stop, is_async=is_async)

    # -- the child's answer ----------------------------------------------------

    def _child_config(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        call: _Call,
    ) -> RunnableConfig:
        """For a child called through its public API: nested under ChatTally's run."""
        config: RunnableConfig = {
            "metadata": {
                TALLY_MODEL_KEY: call.planned.name,
                "tally_decision_id": call.planned.meta["decision_id"],
            }
        }
        if run_manager is not None:
            # LLM run managers have no get_child(): build what it would return.
            manager: CallbackManager | AsyncCallbackManager
            if isinstance(run_manager, AsyncCallbackManagerForLLMRun):
                manager = AsyncCallbackManager(handlers=[], parent_run_id=run_manager.run_id)
            else:
                manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
            manager.set_handlers(run_manager.inheritable_handlers)
            manager.add_tags(run_manager.inheritable_tags)
            manager.add_metadata(run_manager.inheritable_metadata)
            config["callbacks"] = manager
        return config

    def _child_result(
        self, call: _Call, run_manager: CallbackManagerForLLMRun | None
    ) -> ChatResult:
        if call.kwargs is None:
            message = call.runnable.invoke(
                call.messages, self._child_config(run_manager, call), stop=call.stop
            )
            return ChatResult(generations=[ChatGeneration(message=message)])
        if call.child.rate_limiter is not None:
            call.child.rate_limiter.acquire(blocking=True)
        # The child's own run manager would be ChatTally's: its tokens are
        # reported by ChatTally when it streams (see _generate).
        return call.child._generate(call.messages, stop=call.stop, **call.kwargs)

    async def _achild_result(
        self, call: _Call, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> ChatResult:
        if call.kwargs is None:
            message = await call.runnable.ainvoke(
                call.messages, self._child_config(run_manager, call), stop=call.stop
            )
            return ChatResult(generations=[ChatGeneration(message=message)])
        if call.child.rate_limiter is not None:
            await call.child.rate_limiter.aacquire(blocking=True)
        return await call.child._agenerate(call.messages, stop=call.stop, **call.kwargs)

    def _child_chunks(
        self, call: _Call, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        child = call.child
        if call.kwargs is None:
            config = self._child_config(run_manager, call)
            for message in call.runnable.stream(call.messages, config, stop=call.stop):
                yield ChatGenerationChunk(message=_as_chunk(message))
        elif type(child)._stream is BaseChatModel._stream:  # the child cannot stream
            yield _one_chunk(self._child_result(call, run_manager))
        else:
            if child.rate_limiter is not None:
                child.rate_limiter.acquire(blocking=True)
            yield from child._stream(call.messages, stop=call.stop, **call.kwargs)

    async def _achild_chunks(
        self, call: _Call, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[ChatGenerationChunk]:
        child = call.child
        if call.kwargs is None:
            config = self._child_config(run_manager, call)
            async for message in call.runnable.astream(call.messages, config, stop=call.stop):
                yield ChatGenerationChunk(message=_as_chunk(message))
        elif (
            type(child)._stream is BaseChatModel._stream
            and type(child)._astream is BaseChatModel._astream
        ):
            yield _one_chunk(await self._achild_result(call, run_manager))
        else:
            if child.rate_limiter is not None:
                await child.rate_limiter.aacquire(blocking=True)
            async for chunk in child._astream(call.messages, stop=call.stop, **call.kwargs):
                yield chunk

    def _answered(self, call: _Call, result: ChatResult) -> ChatResult:
        """The child's result with the decision (and the routed model) on the message."""
        if not result.generations:
            return result
        first, *rest = result.generations
        message = stamped(first.message, call.planned.meta, call.planned.name)
        answer = ChatGeneration(message=message, generation_info=first.generation_info)
        return ChatResult(generations=[answer, *rest], llm_output=result.llm_output)

    @staticmethod
    def _tokens(result: ChatResult) -> tuple[int | None, int | None]:
        message = result.generations[0].message if result.generations else None
        return result_tokens(message, result.llm_output)

    # -- what LangChain asks of a chat model -----------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.cascade is not None:
            return self._cascade(messages, stop, run_manager, kwargs)
        call = self._route(messages, run_manager, kwargs, stop)
        if self._streams(run_manager, False, kwargs):
            return generate_from_stream(self._stream_call(call, run_manager))
        started = time.perf_counter()
        try:
            result = self._child_result(call, run_manager)
        except BaseException as exc:
            self._finish(call, ms_since(started), failed(exc), (None, None))
            raise
        latency_ms = ms_since(started)
        message = result.generations[0].message if result.generations else None
        graded = outcome(self.scorer, call.messages, message, self._warn)
        self._finish(call, latency_ms, graded, self._tokens(result))
        self._shadow(call, False)
        return self._answered(call, result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.cascade is not None:
            return await self._acascade(messages, stop, run_manager, kwargs)
        call = self._route(messages, run_manager, kwargs, stop)
        if self._streams(run_manager, True, kwargs):
            return await agenerate_from_stream(self._astream_call(call, run_manager))
        started = time.perf_counter()
        try:
            result = await self._achild_result(call, run_manager)
        except BaseException as exc:
            self._finish(call, ms_since(started), failed(exc), (None, None))
            raise
        latency_ms = ms_since(started)
        message = result.generations[0].message if result.generations else None
        graded = await aoutcome(self.scorer, call.messages, message, self._warn)
        self._finish(call, latency_ms, graded, self._tokens(result))
        self._shadow(call, True)
        return self._answered(call, result)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.cascade is not None:
            yield _one_chunk(self._cascade(messages, stop, run_manager, kwargs))
            return
        call = self._route(messages, run_manager, kwargs, stop)
        # BaseChatModel reports these tokens itself on every path that calls _stream.
        yield from self._stream_call(call, None)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.cascade is not None:
            yield _one_chunk(await self._acascade(messages, stop, run_manager, kwargs))
            return
        call = self._route(messages, run_manager, kwargs, stop)
        async for chunk in self._astream_call(call, None):
            yield chunk

    def _stream_call(
        self, call: _Call, report: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        """The child's chunks with telemetry; each token to ``report`` if given."""
        started = time.perf_counter()
        acc = _Accumulator(keep=self.scorer is not None, meta=call.planned.meta)
        try:
            for chunk in self._child_chunks(call, report):
                acc.add(chunk.message)
                if report is not None:
                    report.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        except BaseException as exc:
            self._finish(call, ms_since(started), failed(exc), acc.tokens)
            raise
        latency_ms = ms_since(started)
        graded = outcome(self.scorer, call.messages, acc.message, self._warn)
        self._finish(call, latency_ms, graded, acc.tokens)
        self._shadow(call, False)

    async def _astream_call(
        self, call: _Call, report: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[ChatGenerationChunk]:
        started = time.perf_counter()
        acc = _Accumulator(keep=self.scorer is not None, meta=call.planned.meta)
        try:
            async for chunk in self._achild_chunks(call, report):
                acc.add(chunk.message)
                if report is not None:
                    await report.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        except BaseException as exc:
            self._finish(call, ms_since(started), failed(exc), acc.tokens)
            raise
        latency_ms = ms_since(started)
        graded = await aoutcome(self.scorer, call.messages, acc.message, self._warn)
        self._finish(call, latency_ms, graded, acc.tokens)
        self._shadow(call, True)


    # -- cascades ----------------------------------------------------------------

    def _cascade_start(
        self,
        messages: list[BaseMessage],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> tuple[CascadeRun, dict[str, Any]]:
        caught = _run_metadata.get()
        if caught is not None:
            _run_metadata.set(None)
        metadata = run_manager.metadata if run_manager is not None else caught
        per_call = envelope_dict((metadata or {}).get("tally"), "metadata.tally")
        base = {**self._pool.default, **per_call}
        assert self.cascade is not None
        return self.cascade.start(self.tally, base, available=set(self.models)), per_call

    def _cascade_tier(
        self,
        run: CascadeRun,
        tier: int,
        per_call: Mapping[str, Any],
        messages: list[BaseMessage],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: Mapping[str, Any],
        stop: list[str] | None,
    ) -> _Call:
        env = {**per_call, **run.envelope_for(tier)}
        return self._route(messages, run_manager, kwargs, stop, per_call=env)

    def _cascade_checked(
        self, run: CascadeRun, tier: int, call: _Call, result: ChatResult, started: float
    ) -> bool:
        """Check one tier's answer; its grade is that call's telemetry. True: stop here."""
        latency_ms = ms_since(started)
        tokens = self._tokens(result)
        message = result.generations[0].message if result.generations else None
        spec = self.tally.catalog[call.planned.name]
        cost = (spec.estimate_cost_usd(tokens[0] or 0, tokens[1] or 0)
                if tokens != (None, None) else None)
        attempt = run.record(
            tier, {"messages": call.messages}, message, cost_usd=cost, latency_ms=latency_ms,
            decision_id=call.planned.meta.get("decision_id"), model=call.planned.name,
            grade=lambda q: self._finish(call, latency_ms, {"success": True, "quality": q},
                                         tokens),
        )
        return attempt.passed

    def _cascade_answer(self, run: CascadeRun, call: _Call, result: ChatResult) -> ChatResult:
        answered = self._answered(call, result)
        done = run.result(answered)
        message = answered.generations[0].message
        meta = dict(message.response_metadata.get("tally") or {})
        meta["cascade"] = {
            "cascade_id": done.cascade_id, "tier": done.tier, "tries": len(done.attempts),
            "cost_usd": done.cost_usd,
            "attempts": [{"model": a.model, "passed": a.passed, "quality": a.quality,
                          "cost_usd": a.cost_usd} for a in done.attempts],
        }
        message.response_metadata["tally"] = meta
        return answered

    def _cascade(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: Mapping[str, Any],
    ) -> ChatResult:
        run, per_call = self._cascade_start(messages, run_manager)
        while (step := run.next_tier()) is not None:
            tier = step[0]
            call = self._cascade_tier(run, tier, per_call, messages, run_manager, kwargs, stop)
            started = time.perf_counter()
            try:
                result = self._child_result(call, run_manager)
            except Exception as exc:
                self._finish(call, ms_since(started), failed(exc), (None, None))
                run.failed(tier, latency_ms=ms_since(started), model=call.planned.name)
                if run.next_tier() is None:
                    raise
                continue
            if self._cascade_checked(run, tier, call, result, started):
                return self._cascade_answer(run, call, result)
        raise RuntimeError("the cascade ended without an answer")  # next_tier() ends on one

    async def _acascade(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        kwargs: Mapping[str, Any],
    ) -> ChatResult:
        run, per_call = self._cascade_start(messages, run_manager)
        while (step := run.next_tier()) is not None:
            tier = step[0]
            call = self._cascade_tier(run, tier, per_call, messages, run_manager, kwargs, stop)
            started = time.perf_counter()
            try:
                result = await self._achild_result(call, run_manager)
            except Exception as exc:
                self._finish(call, ms_since(started), failed(exc), (None, None))
                run.failed(tier, latency_ms=ms_since(started), model=call.planned.name)
                if run.next_tier() is None:
                    raise
                continue
            if self._cascade_checked(run, tier, call, result, started):
                return self._cascade_answer(run, call, result)
        raise RuntimeError("the cascade ended without an answer")


class _Accumulator:
    """Tokens (and, for the scorer, the merged message) of a stream."""

    __slots__ = ("_in", "_out", "_keep", "_meta", "message")

    def __init__(self, keep: bool, meta: dict[str, Any]) -> None:
        self._in: int | None = None
        self._out: int | None = None
        self._keep = keep
        self._meta: dict[str, Any] | None = meta
        self.message: BaseMessage | None = None

    def add(self, chunk: BaseMessage) -> None:
        if self._meta is not None:
            # The first chunk only: chunks' response_metadata merge by
            # concatenating strings.
            stamp(chunk, self._meta)
            self._meta = None
        tin, tout = usage_tokens(chunk)
        if tin is not None:
            self._in = (self._in or 0) + tin
        if tout is not None:
            self._out = (self._out or 0) + tout
        if self._keep:
            if isinstance(self.message, BaseMessageChunk) and isinstance(chunk, BaseMessageChunk):
                self.message = self.message + chunk
            else:
                self.message = chunk

    @property
    def tokens(self) -> tuple[int | None, int | None]:
        return self._in, self._out


def _with_run_start(callbacks: Any) -> Any:
    """ChatTally's callbacks plus ``_RUN_START`` (never inherited by other runs)."""
    if callbacks is None:
        return [_RUN_START]
    if isinstance(callbacks, list):
        return callbacks if _RUN_START in callbacks else [*callbacks, _RUN_START]
    if hasattr(callbacks, "handlers") and _RUN_START not in callbacks.handlers:
        callbacks = callbacks.copy()
        callbacks.add_handler(_RUN_START, inherit=False)
    return callbacks


def _bound_kwargs(runnable: Runnable[Any, Any], child: BaseChatModel) -> dict[str, Any] | None:
    """The arguments ``child.bind_tools()`` bound, when it is a plain binding of the child."""
    if isinstance(runnable, RunnableBinding) and runnable.bound is child:
        return dict(runnable.kwargs)
    return None


def _one_chunk(result: ChatResult) -> ChatGenerationChunk:
    gen = result.generations[0]
    return ChatGenerationChunk(message=_as_chunk(gen.message), generation_info=gen.generation_info)


def _as_chunk(message: BaseMessage) -> BaseMessageChunk:
    if isinstance(message, BaseMessageChunk):
        return message
    if isinstance(message, AIMessage):
        return AIMessageChunk(**message.model_dump(exclude={"type"}))
    return AIMessageChunk(
        content=message.content,
        response_metadata=message.response_metadata,
        id=message.id,
    )
