"""ChatTally: a LangChain chat model that routes each call through Tally.

Each call builds an envelope (the shape of the task, never its content),
asks ``tally.route()`` for a model, and hands the whole call -- input, config,
callbacks, stop, bound tools -- to that child chat model. The child runs as a
normal LangChain run nested under ChatTally's own (chain) run, so tracing,
streaming callbacks and usage handlers see exactly one chat-model run per
call. When the call ends, ChatTally sends telemetry (tokens, latency, success
or the error's class, the scorer's quality) joined to the decision by id.
"""

from __future__ import annotations

import asyncio
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
    AsyncCallbackManagerForChainRun,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForChainRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, merge_configs
from langchain_core.tools import BaseTool
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from tally_core import Envelope, InvalidFieldError, RouteDecision, Tally
from tally_langchain._common import (
    DEFAULT_TASK_TYPE,
    TALLY_MODEL_KEY,
    LogOnce,
    Scorer,
    aoutcome,
    error_name,
    outcome,
    send_telemetry,
    usage_tokens,
)

__all__ = ["ChatTally", "collect_decisions"]

# Extra bind_tools() arguments (parallel_tool_calls, strict, ...) travel under
# this key so they reach the chosen child's bind_tools(), not its invoke().
_BIND_TOOLS_KWARGS = "tally_bind_tools_kwargs"
_CANCELLED = (GeneratorExit, KeyboardInterrupt, asyncio.CancelledError)

_decision_sink: ContextVar[list[RouteDecision] | None] = ContextVar(
    "tally_langchain_decisions", default=None
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


@dataclass(slots=True)
class _Call:
    """One routed call: what was chosen and what to report when it ends."""

    decision: RouteDecision | None
    name: str
    runnable: Runnable[LanguageModelInput, Any]
    kwargs: dict[str, Any]
    stop: list[str] | None
    messages: list[BaseMessage]
    meta: dict[str, Any]
    task_type: str
    org: str


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
        ``with_structured_output``, ``context_length`` from the messages.
    stop
        Default stop sequences for calls that give none.

    Sampling parameters (temperature, max tokens, timeouts, retries) belong
    on the child models; ChatTally ignores them, as LangChain ignores any
    argument a chat model does not define.

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

    _default: dict[str, Any] = PrivateAttr(default_factory=dict)
    _no_tools: frozenset[str] = PrivateAttr(default=frozenset())
    _windows: dict[str, int] = PrivateAttr(default_factory=dict)
    _pool_extra: bool = PrivateAttr(default=False)
    _warn: LogOnce = PrivateAttr(default_factory=LogOnce)
    _bound: OrderedDict[tuple[str, int], tuple[Any, ...]] = PrivateAttr(
        default_factory=OrderedDict
    )
    _bound_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            raise _invalid_field(exc) from None

    # -- construction --------------------------------------------------------

    @field_validator("models", mode="before")
    @classmethod
    def _name_models(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name, model in value.items():
                if not isinstance(name, str) or not isinstance(model, BaseChatModel):
                    raise InvalidFieldError(
                        "models",
                        "must map model names to LangChain chat models, "
                        f"got {name!r}: {type(model).__name__}",
                    )
            return dict(value)
        if isinstance(value, (list, tuple)):
            named: dict[str, BaseChatModel] = {}
            for model in value:
                if not isinstance(model, BaseChatModel):
                    raise InvalidFieldError(
                        "models", f"must hold LangChain chat models, got {type(model).__name__}"
                    )
                name = model._get_ls_params().get("ls_model_name")
                if not isinstance(name, str) or not name:
                    raise InvalidFieldError(
                        "models",
                        f"cannot tell the model name of {type(model).__name__}; "
                        "pass a dict {name: chat_model}",
                    )
                if name in named:
                    raise InvalidFieldError("models", f"two chat models are named {name!r}")
                named[name] = model
            return named
        raise InvalidFieldError(
            "models", f"must be a dict of name -> chat model, got {type(value).__name__}"
        )

    @model_validator(mode="after")
    def _check_pool(self) -> ChatTally:
        if not isinstance(self.tally, Tally):
            raise InvalidFieldError("tally", f"must be a Tally, got {type(self.tally).__name__}")
        if not self.models:
            raise InvalidFieldError("models", "needs at least one chat model")
        pool = set(self.tally.catalog.names)
        unknown = sorted(set(self.models) - pool)
        if unknown:
            raise InvalidFieldError(
                "models",
                f"{', '.join(map(repr, unknown))} not in the Tally pool "
                f"({', '.join(self.tally.catalog.names)}); name each chat model as the pool does",
            )
        if self.tally.fallback not in self.models:
            raise InvalidFieldError(
                "models", f"no chat model for the fallback {self.tally.fallback!r}"
            )
        default = dict(self.envelope)
        default.setdefault("task_type", DEFAULT_TASK_TYPE)
        Envelope(**default)  # raises InvalidFieldError naming the bad field
        self._default = default
        self._pool_extra = bool(pool - set(self.models))
        self._no_tools = frozenset(n for n, m in self.models.items() if not _can_call_tools(m))
        self._windows = {
            n: w for n, m in self.models.items() if (w := _max_input_tokens(m)) is not None
        }
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

    def _plan(
        self,
        input: LanguageModelInput,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        stop: list[str] | None,
    ) -> _Call:
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
        messages = self._convert_input(input).to_messages()
        env: dict[str, Any] = self._default
        decision: RouteDecision | None = None
        name = pin or self.tally.fallback
        try:
            env = self._envelope_for(metadata, messages, tools, sof, pin)
            decision = self.tally.route(env)
            name = decision.model
            if name not in self.models:
                self._warn(
                    "unserved",
                    f"tally_langchain: Tally chose {name!r}, which has no chat model here; "
                    f"using {self.tally.fallback!r}",
                )
                name = pin or self.tally.fallback
        except Exception as exc:
            decision, name = None, self._fail_open_model(env, pin)
            self._warn(
                "route", f"tally_langchain: routing failed; using {name!r} (fail open)", exc
            )
        if tools:
            runnable = self._bind_child(name, tools, tool_choice, extra, sof)
        else:
            runnable = self.models[name]
            if sof is not None:
                kw["ls_structured_output_format"] = sof
        if decision is not None:
            meta: dict[str, Any] = {
                "decision_id": decision.decision_id,
                "model": name,
                "phase": decision.phase,
                "confidence": round(decision.confidence, 6),
                "task_type": decision.task_type,
            }
            sink = _decision_sink.get()
            if sink is not None:
                sink.append(decision)
        else:
            meta = {"decision_id": None, "model": name, "phase": "fallback", "routed": False}
        task_type, org = env.get("task_type"), env.get("org")
        return _Call(
            decision=decision,
            name=name,
            runnable=runnable,
            kwargs=kw,
            stop=stop if stop is not None else (self.stop or None),
            messages=messages,
            meta=meta,
            task_type=task_type if isinstance(task_type, str) else self._default["task_type"],
            org=org if isinstance(org, str) else "default",
        )

    def _fail_open_model(self, env: Mapping[str, Any], pin: str | None) -> str:
        """The fallback, unless the call's ``allowed_models`` exclude it."""
        if pin is not None:
            return pin
        fallback = self.tally.fallback
        allowed = env.get("allowed_models")
        if isinstance(allowed, str):
            allowed = (allowed,)
        if isinstance(allowed, (list, tuple, set, frozenset)) and fallback not in allowed:
            served = sorted(str(n) for n in allowed if n in self.models)
            if served:
                return served[0]
        return fallback

    def _envelope_for(
        self,
        metadata: Mapping[str, Any] | None,
        messages: list[BaseMessage],
        tools: list[Any] | None,
        sof: Any,
        pin: str | None,
    ) -> dict[str, Any]:
        env = dict(self._default)
        per_call = metadata.get("tally") if metadata else None
        if per_call is not None:
            if isinstance(per_call, Envelope):
                per_call = per_call.model_dump(exclude_unset=True)
            elif isinstance(per_call, str):
                per_call = {"task_type": per_call}
            if not isinstance(per_call, Mapping):
                raise InvalidFieldError(
                    "metadata.tally",
                    f"must be a mapping of envelope fields, got {type(per_call).__name__}",
                )
            env.update(per_call)
        if self.infer_envelope:
            if tools and "tools_used" not in env:
                env["tools_used"] = len(tools)
            if sof is not None and "structure_type" not in env:
                env["structure_type"] = "json"
            if "context_length" not in env:
                env["context_length"] = count_tokens_approximately(messages)
        allowed = self._allowed(env, tools, pin)
        if allowed is not None:
            env["allowed_models"] = allowed
        return env

    def _allowed(
        self, env: Mapping[str, Any], tools: list[Any] | None, pin: str | None
    ) -> tuple[str, ...] | None:
        """Restrict the pool to children that can take this call, or None."""
        if pin is not None:
            ok = {pin}
        else:
            ok = set(self.models)
            # Each filter applies only if it leaves a model: otherwise Tally's
            # own filters and the fallback decide.
            if tools and self._no_tools and (ok - self._no_tools):
                ok -= self._no_tools
            tokens = env.get("context_length")
            if self._windows and isinstance(tokens, int) and not isinstance(tokens, bool):
                small = {n for n, w in self._windows.items() if w < tokens}
                if small and (ok - small):
                    ok -= small
            if (
                len(ok) == len(self.models)
                and not self._pool_extra
                and env.get("allowed_models") is None
            ):
                return None
        user = env.get("allowed_models")
        if user is not None:
            ok &= {user} if isinstance(user, str) else set(user)
        return tuple(sorted(ok))

    # -- telemetry -----------------------------------------------------------

    def _finish(
        self,
        call: _Call,
        latency_ms: float,
        fields: Mapping[str, Any],
        tokens: tuple[int | None, int | None],
    ) -> None:
        """Report the call's outcome: O(1), and never raises into the chain."""
        try:
            d = call.decision
            if d is not None:
                where: dict[str, Any] = {"model": call.name if call.name != d.model else None}
            else:
                where = {"model": call.name, "task_type": call.task_type, "org": call.org}
            send_telemetry(
                self.tally,
                self._warn,
                d,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                latency_ms=latency_ms,
                **where,
                **fields,
            )
        except Exception as err:
            self._warn("telemetry", "tally_langchain: telemetry was not recorded", err)

    def _graded(self, call: _Call, message: BaseMessage | None) -> dict[str, Any]:
        return outcome(self.scorer, call.messages, message, self._warn)

    async def _agraded(self, call: _Call, message: BaseMessage | None) -> dict[str, Any]:
        return await aoutcome(self.scorer, call.messages, message, self._warn)

    # -- configs -------------------------------------------------------------

    def _own_config(self, config: RunnableConfig | None) -> RunnableConfig:
        """The caller's config plus ChatTally's own callbacks, tags and metadata."""
        extra: RunnableConfig = {}
        if self.callbacks:
            extra["callbacks"] = self.callbacks
        if self.tags:
            extra["tags"] = self.tags
        if self.metadata and set(self.metadata) != {"lc_versions"}:
            extra["metadata"] = self.metadata
        # ensure_config first: a call made without a config inherits the
        # enclosing run's config from the context, callbacks included.
        return merge_configs(ensure_config(config), extra) if extra else ensure_config(config)

    @staticmethod
    def _tally_metadata(call: _Call) -> dict[str, Any]:
        return {
            TALLY_MODEL_KEY: call.name,
            "tally_decision_id": call.meta["decision_id"],
            "tally_phase": call.meta["phase"],
        }

    def _child_config(self, config: RunnableConfig, call: _Call) -> RunnableConfig:
        child = config.copy()
        child["metadata"] = {**(config.get("metadata") or {}), **self._tally_metadata(call)}
        return child

    def _legacy_config(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        call: _Call,
    ) -> RunnableConfig:
        config: RunnableConfig = {"metadata": self._tally_metadata(call)}
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

    # -- the public call paths: the whole call goes to the child ------------

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        def run(
            inp: LanguageModelInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
        ) -> AIMessage:
            call = self._plan(inp, config.get("metadata"), kwargs, stop)
            return self._invoke_call(call, inp, self._child_config(config, call))

        return self._call_with_config(run, input, self._own_config(config))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        async def run(
            inp: LanguageModelInput,
            run_manager: AsyncCallbackManagerForChainRun,
            config: RunnableConfig,
        ) -> AIMessage:
            call = self._plan(inp, config.get("metadata"), kwargs, stop)
            return await self._ainvoke_call(call, inp, self._child_config(config, call))

        return await self._acall_with_config(run, input, self._own_config(config))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        def transform(
            inputs: Iterator[LanguageModelInput],
            run_manager: CallbackManagerForChainRun,
            config: RunnableConfig,
        ) -> Iterator[AIMessage]:
            for inp in inputs:
                call = self._plan(inp, config.get("metadata"), kwargs, stop)
                yield from self._stream_call(call, inp, self._child_config(config, call))

        for chunk in self._transform_stream_with_config(
            iter([input]), transform, self._own_config(config)
        ):
            yield cast("AIMessageChunk", chunk)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        async def transform(
            inputs: AsyncIterator[LanguageModelInput],
            run_manager: AsyncCallbackManagerForChainRun,
            config: RunnableConfig,
        ) -> AsyncIterator[AIMessage]:
            async for inp in inputs:
                call = self._plan(inp, config.get("metadata"), kwargs, stop)
                async for chunk in self._astream_call(
                    call, inp, self._child_config(config, call)
                ):
                    yield chunk

        async def one() -> AsyncIterator[LanguageModelInput]:
            yield input

        async for chunk in self._atransform_stream_with_config(
            one(), transform, self._own_config(config)
        ):
            yield cast("AIMessageChunk", chunk)

    # -- delegation with telemetry --------------------------------------------

    def _invoke_call(
        self, call: _Call, input: LanguageModelInput, config: RunnableConfig
    ) -> AIMessage:
        started = time.perf_counter()
        try:
            message = call.runnable.invoke(input, config, stop=call.stop, **call.kwargs)
        except BaseException as exc:
            self._finish(call, _ms_since(started), _failed(exc), (None, None))
            raise
        latency_ms = _ms_since(started)
        self._finish(call, latency_ms, self._graded(call, message), usage_tokens(message))
        return cast("AIMessage", _stamped(message, call.meta))

    async def _ainvoke_call(
        self, call: _Call, input: LanguageModelInput, config: RunnableConfig
    ) -> AIMessage:
        started = time.perf_counter()
        try:
            message = await call.runnable.ainvoke(input, config, stop=call.stop, **call.kwargs)
        except BaseException as exc:
            self._finish(call, _ms_since(started), _failed(exc), (None, None))
            raise
        latency_ms = _ms_since(started)
        graded = await self._agraded(call, message)
        self._finish(call, latency_ms, graded, usage_tokens(message))
        return cast("AIMessage", _stamped(message, call.meta))

    def _stream_call(
        self, call: _Call, input: LanguageModelInput, config: RunnableConfig
    ) -> Iterator[AIMessageChunk]:
        started = time.perf_counter()
        acc = _Accumulator(keep=self.scorer is not None, meta=call.meta)
        try:
            for chunk in call.runnable.stream(input, config, stop=call.stop, **call.kwargs):
                acc.add(chunk)
                yield cast("AIMessageChunk", chunk)
        except BaseException as exc:
            self._finish(call, _ms_since(started), _failed(exc), acc.tokens)
            raise
        latency_ms = _ms_since(started)
        self._finish(call, latency_ms, self._graded(call, acc.message), acc.tokens)

    async def _astream_call(
        self, call: _Call, input: LanguageModelInput, config: RunnableConfig
    ) -> AsyncIterator[AIMessageChunk]:
        started = time.perf_counter()
        acc = _Accumulator(keep=self.scorer is not None, meta=call.meta)
        try:
            async for chunk in call.runnable.astream(
                input, config, stop=call.stop, **call.kwargs
            ):
                acc.add(chunk)
                yield cast("AIMessageChunk", chunk)
        except BaseException as exc:
            self._finish(call, _ms_since(started), _failed(exc), acc.tokens)
            raise
        latency_ms = _ms_since(started)
        graded = await self._agraded(call, acc.message)
        self._finish(call, latency_ms, graded, acc.tokens)

    # -- the legacy paths: generate(), stream_events(version="v3") -------------
    # These go through BaseChatModel's own LLM run, so the child's run nests
    # under a ChatTally LLM run (two chat-model runs per call on these paths).

    def _should_stream(self, *, async_api: bool, **kwargs: Any) -> bool:
        # generate() would call _stream without its run manager; _generate has it.
        return False

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._plan(messages, run_manager.metadata if run_manager else None, kwargs, stop)
        message = self._invoke_call(call, messages, self._legacy_config(run_manager, call))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._plan(messages, run_manager.metadata if run_manager else None, kwargs, stop)
        message = await self._ainvoke_call(call, messages, self._legacy_config(run_manager, call))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._plan(messages, run_manager.metadata if run_manager else None, kwargs, stop)
        config = self._legacy_config(run_manager, call)
        for chunk in self._stream_call(call, messages, config):
            yield ChatGenerationChunk(message=_as_chunk(chunk))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._plan(messages, run_manager.metadata if run_manager else None, kwargs, stop)
        config = self._legacy_config(run_manager, call)
        async for chunk in self._astream_call(call, messages, config):
            yield ChatGenerationChunk(message=_as_chunk(chunk))


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
            _stamp(chunk, self._meta)
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


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _failed(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, _CANCELLED):
        return {}  # the caller stopped early: no verdict on the model
    return {"success": False, "error": error_name(exc)}


def _stamped(message: BaseMessage, meta: dict[str, Any]) -> BaseMessage:
    """A shallow copy with the decision in ``response_metadata["tally"]``.

    A copy, because a child's cache may hand the same message to many calls.
    """
    try:
        return message.model_copy(
            update={"response_metadata": {**message.response_metadata, "tally": dict(meta)}}
        )
    except Exception:  # not a pydantic message: leave it as it is
        return message


def _stamp(message: BaseMessage, meta: dict[str, Any]) -> None:
    try:
        message.response_metadata["tally"] = dict(meta)
    except Exception:  # a message type without response_metadata
        pass


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


def _can_call_tools(model: BaseChatModel) -> bool:
    if type(model).bind_tools is BaseChatModel.bind_tools:
        return False
    profile = getattr(model, "profile", None)  # langchain-core >= 1.1
    return not (isinstance(profile, dict) and profile.get("tool_calling") is False)


def _max_input_tokens(model: BaseChatModel) -> int | None:
    profile = getattr(model, "profile", None)  # langchain-core >= 1.1
    if isinstance(profile, dict):
        value = profile.get("max_input_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _invalid_field(exc: ValidationError) -> InvalidFieldError:
    err = exc.errors(include_url=False)[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, InvalidFieldError):
        return original
    loc = err.get("loc") or ("ChatTally",)
    msg = str(err["msg"]).removeprefix("Value error, ")
    return InvalidFieldError(str(loc[0]), f"{msg}, got {type(err.get('input')).__name__}")
