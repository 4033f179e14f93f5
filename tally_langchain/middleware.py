"""TallyMiddleware: route every model call of a LangChain v1 agent through Tally.

``create_agent(model, tools, middleware=[TallyMiddleware(tally, models={...})])``:
each model call of the agent loop (not once per run) gets its own envelope
and decision, runs on the chosen chat model through
``handler(request.override(model=chosen))``, and is reported to Tally when
it ends. Which model *served* a call is observed, not assumed: while the
handler runs, a callback handler sees every chat-model run inside it, so a
call retried by ``ModelRetryMiddleware`` or moved by ``ModelFallbackMiddleware``
is recorded once per attempt, against the model that made it.

``TallyDecisionModel`` plugs Tally into LangChain's ``ModelRouterMiddleware``
(one choice per agent run) where the installed LangChain has it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast
from uuid import UUID

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "TallyMiddleware needs the 'langchain' package (LangChain v1 agents): "
        "pip install 'tally-router[langchain]'"
    ) from exc
try:  # langchain >= 1.1: a response that carries a Command too
    from langchain.agents.middleware.types import (  # type: ignore[attr-defined,unused-ignore]
        ExtendedModelResponse,
    )
except ImportError:  # pragma: no cover - langchain 1.0

    class ExtendedModelResponse:  # type: ignore[no-redef,unused-ignore]
        """Stands in for the class older langchain releases do not have."""

        model_response: Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from tally_core import Tally
from tally_langchain._common import (
    MIDDLEWARE_CALL,
    LogOnce,
    Scorer,
    aoutcome,
    first_message,
    outcome,
    result_tokens,
    usage_tokens,
)
from tally_langchain._routing import (
    CANCELLED,
    Planned,
    Pool,
    envelope_dict,
    failed,
    ls_model_name,
    ms_since,
    name_models,
    stamped,
)

__all__ = ["TallyMiddleware"]

EnvelopeSource = Callable[[Any, Any], Any]
"""``fn(state, runtime) -> envelope`` (a mapping, an ``Envelope``, a task type
or None): the envelope of each model call from the agent's state and its
runtime context (``runtime.context``)."""

_attempts = MIDDLEWARE_CALL
# Once, at import: every chat-model run started while a TallyMiddleware call
# is in progress (in this thread or task) reports to that call's _Attempts.
register_configure_hook(_attempts, inheritable=True)


def _no_verdict(exc: BaseException) -> bool:
    """An interrupt or a cancelled call says nothing about the model."""
    if isinstance(exc, CANCELLED):
        return True
    try:
        from langgraph.errors import GraphBubbleUp
    except ImportError:  # pragma: no cover - langgraph comes with langchain
        return False
    return isinstance(exc, GraphBubbleUp)


class _Attempt:
    __slots__ = ("started", "cls", "ls_name", "provider", "latency_ms", "tokens", "error")

    def __init__(self, cls: str, ls_name: str | None, provider: str | None) -> None:
        self.started = time.perf_counter()
        self.cls = cls
        self.ls_name = ls_name
        self.provider = provider
        self.latency_ms: float | None = None
        self.tokens: tuple[int | None, int | None] = (None, None)
        self.error: BaseException | None = None


class _Attempts(BaseCallbackHandler):
    """The chat-model runs made inside one model call, in the order they end."""

    run_inline = True  # on the caller's thread or loop: O(1) per event
    raise_error = False

    def __init__(self) -> None:
        super().__init__()
        self._open: dict[UUID, _Attempt] = {}
        self._seen: set[UUID] = set()
        self.done: list[_Attempt] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._seen.add(run_id)
        if parent_run_id in self._seen:
            return  # a model run inside a model run: the outer one is the attempt
        ident = (serialized or {}).get("id")
        cls = ident[-1] if isinstance(ident, list) and ident else "?"
        md = metadata or {}
        name, provider = md.get("ls_model_name"), md.get("ls_provider")
        self._open[run_id] = _Attempt(
            str(cls),
            name if isinstance(name, str) else None,
            provider if isinstance(provider, str) else None,
        )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        attempt = self._open.pop(run_id, None)
        if attempt is None:
            return
        attempt.latency_ms = ms_since(attempt.started)
        attempt.tokens = result_tokens(first_message(response), response.llm_output)
        self.done.append(attempt)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        attempt = self._open.pop(run_id, None)
        if attempt is None:
            return
        attempt.latency_ms = ms_since(attempt.started)
        attempt.error = error
        self.done.append(attempt)


class TallyMiddleware(AgentMiddleware):
    """Agent middleware that routes each model call to the cheapest good-enough model.

    Parameters
    ----------
    tally
        The ``Tally`` that routes and learns.
    models
        The chat models to route among, keyed by their name in the Tally pool
        (or a list named by ``ls_model_name``); the fallback must be among them.
    envelope
        The calls' envelope fields (``{"task_type": "code-debug"}``), or
        ``fn(state, runtime)`` returning them (a mapping, an ``Envelope`` or a
        task type) per model call. Without a task type, calls count as
        ``"general"``.
    scorer
        ``fn(messages, ai_message) -> float | bool | None`` grading each
        answer (may be async on async agents), as for ``ChatTally``.
    infer_envelope
        Fill fields the envelope leaves unset from the call: ``tools_used``
        from the tools bound to the call, ``structure_type="json"`` when the
        agent has a response format, ``context_length`` from the messages, and ``task_type`` and
        ``complexity`` read off the messages in process (``tally_core.infer``;
        never stored), listed in ``response_metadata["tally"]["inferred"]``.
        Given fields always win. False turns all of it off.

    Each call's decision is on the AI message it produced:
    ``response_metadata["tally"]`` (``decision_id``, ``model``, ``phase``, ...),
    for ``tally.feedback`` later. Telemetry counts every model run once: a
    call that ``ModelRetryMiddleware`` retried or ``ModelFallbackMiddleware``
    moved to another model is recorded per attempt, against the model that
    made it (runs on a model outside the pool are not recorded). Put
    ``TallyMiddleware`` first in ``middleware=[...]`` (outermost); placed
    after a middleware that sets the model itself, it respects that choice:
    a call whose model is not the agent's own is recorded, not re-routed.
    One instance per agent.

    Fails open: if Tally errors, the call goes to the fallback model and the
    error is logged once; telemetry never raises into the agent.

    >>> from langchain.agents import create_agent
    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from tally_core import ModelSpec, Tally
    >>> tally = Tally([ModelSpec(name="small", input_cost_per_mtok=0.1, output_cost_per_mtok=0.4),
    ...                ModelSpec(name="large", input_cost_per_mtok=5, output_cost_per_mtok=15)],
    ...               fallback="large", store=":memory:", seed=0, background=False)
    >>> models = {"small": FakeListChatModel(responses=["4"]),
    ...           "large": FakeListChatModel(responses=["4"])}
    >>> agent = create_agent(models["large"], middleware=[
    ...     TallyMiddleware(tally, models, envelope={"task_type": "qa-simple"})])
    >>> agent.invoke({"messages": [("user", "2 + 2?")]})["messages"][-1].content
    '4'
    >>> len(list(tally.ledger.rows()))
    1
    >>> tally.close()
    """

    def __init__(
        self,
        tally: Tally,
        models: Mapping[str, BaseChatModel] | list[BaseChatModel],
        *,
        envelope: Mapping[str, Any] | EnvelopeSource | Any = None,
        scorer: Scorer | None = None,
        infer_envelope: bool = True,
    ) -> None:
        super().__init__()
        self._warn = LogOnce()
        self.models = name_models(models)
        self._source: EnvelopeSource | None = envelope if callable(envelope) else None
        default = {} if self._source is not None else envelope_dict(envelope, "envelope")
        self._pool = Pool(tally, self.models, default, self._warn, infer_envelope)
        self.tally = tally
        self.scorer = scorer
        self.tools: list[Any] = []
        self._by_id = {id(m): n for n, m in self.models.items()}
        self._by_sig: dict[tuple[str, str | None], list[str]] = {}
        for n, m in self.models.items():
            self._by_sig.setdefault((type(m).__name__, ls_model_name(m)), []).append(n)
        self._agent_model: int | None = None

    # -- routing -------------------------------------------------------------

    def _plan(self, request: ModelRequest) -> tuple[Planned, BaseChatModel | None]:
        """The plan for one call, and the model to override it with (None: keep it)."""
        per_call: Any = None
        if self._source is not None:
            try:
                per_call = self._source(request.state, request.runtime)
            except Exception as exc:
                self._warn(
                    "envelope", "tally_langchain: the envelope function raised; using defaults",
                    exc,
                )
        messages: list[BaseMessage] = list(request.messages)
        system = _system_message(request)
        if system is not None:
            messages.insert(0, system)
        tools = len(request.tools or ())
        structured = request.response_format is not None
        current = id(request.model)
        if self._agent_model is None:
            # The model node always starts from the agent's own model.
            self._agent_model = current
        if current != self._agent_model:
            # An outer middleware chose this model: record it, do not re-route.
            name = self._by_id.get(current)
            if name is not None:
                planned = self._pool.plan(
                    per_call, messages, tools=tools, structured=structured, pin=name
                )
            else:
                planned = self._pool.unrouted(
                    per_call, ls_model_name(request.model) or type(request.model).__name__
                )
            return planned, None
        planned = self._pool.plan(per_call, messages, tools=tools, structured=structured)
        return planned, self.models[planned.name]

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse | AIMessage | ExtendedModelResponse:
        """Route the call, run it on the chosen model, report each attempt."""
        planned, chosen = self._safe_plan(request)
        with _observed() as attempts:
            started = time.perf_counter()
            try:
                response = handler(_with_model(request, chosen))
            except BaseException as exc:
                self._record(planned, attempts, started, None, None, exc)
                raise
        graded = outcome(self.scorer, request.messages, _ai_message(response), self._warn)
        return self._answered(planned, attempts, started, response, graded, request, False)

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage | ExtendedModelResponse:
        """``wrap_model_call`` for async agents."""
        planned, chosen = self._safe_plan(request)
        with _observed() as attempts:
            started = time.perf_counter()
            try:
                response = await handler(_with_model(request, chosen))
            except BaseException as exc:
                self._record(planned, attempts, started, None, None, exc)
                raise
        graded = await aoutcome(self.scorer, request.messages, _ai_message(response), self._warn)
        return self._answered(planned, attempts, started, response, graded, request, True)

    def _answered(
        self,
        planned: Planned,
        attempts: _Attempts,
        started: float,
        response: ModelResponse,
        graded: Mapping[str, Any],
        request: ModelRequest,
        is_async: bool,
    ) -> ModelResponse:
        served = self._record(planned, attempts, started, _ai_message(response), graded, None)
        self._shadow(planned, served, request, is_async)
        return cast("ModelResponse", _stamp_response(response, planned, served))

    def _shadow(self, planned: Planned, served: str, request: ModelRequest,
                is_async: bool) -> None:
        """A background copy of this model call to a shadow candidate, if one is drawn:
        the same messages (system message included) and tools."""
        if not self.tally.shadows.active:
            return
        messages: list[BaseMessage] = list(request.messages)
        system = _system_message(request)
        if system is not None:
            messages.insert(0, system)
        tools = list(request.tools or ())

        def bind(name: str) -> Any:
            return self.models[name].bind_tools(tools)

        self._pool.shadow(planned, messages, self.scorer, served=served,
                          bind=bind if tools else None, is_async=is_async)

    def _safe_plan(self, request: ModelRequest) -> tuple[Planned, BaseChatModel | None]:
        try:
            return self._plan(request)
        except Exception as exc:  # Pool.plan fails open itself; this is the rest
            fallback = self._pool.fallback
            self._warn(
                "route", f"tally_langchain: routing failed; using {fallback!r} (fail open)", exc
            )
            return self._pool.unrouted(None, fallback), self.models[fallback]

    # -- telemetry -----------------------------------------------------------

    def _served(self, attempt: _Attempt, planned: str) -> str | None:
        """The pool name of the model that made an attempt, or None if outside the pool."""
        names = self._by_sig.get((attempt.cls, attempt.ls_name), [])
        if planned in names:
            return planned
        if len(names) == 1:
            return names[0]
        catalog = self.tally.catalog
        if attempt.ls_name and attempt.ls_name in self.models:
            return attempt.ls_name
        if attempt.ls_name and attempt.provider:
            qualified = f"{attempt.provider}/{attempt.ls_name}"
            if qualified in self.models or qualified in catalog:
                return qualified
        if attempt.ls_name and attempt.ls_name in catalog:
            return attempt.ls_name
        return None

    def _record(
        self,
        planned: Planned,
        attempts: _Attempts,
        started: float,
        message: BaseMessage | None,
        graded: Mapping[str, Any] | None,
        error: BaseException | None,
    ) -> str:
        """Report each attempt of one call; returns the model that served it."""
        try:
            done = attempts.done
            if not done:
                # No chat-model run seen (a middleware answered without a
                # model, or the model does not run LangChain callbacks): the
                # call as a whole, against the model planned.
                if error is None:
                    fields = graded or {"success": True}
                    tokens = usage_tokens(message)
                elif _no_verdict(error):
                    return planned.name
                else:
                    fields, tokens = failed(error), (None, None)
                self._pool.finish(planned, ms_since(started), fields, tokens)
                return planned.name
            last_ok = -1
            if error is None:
                last_ok = max((i for i, a in enumerate(done) if a.error is None), default=-1)
            served_by = planned.name
            for i, attempt in enumerate(done):
                served = self._served(attempt, planned.name)
                if served is None:
                    self._warn(
                        "outside",
                        "tally_langchain: a model outside the Tally pool made a call "
                        f"({attempt.cls}); it is not recorded",
                    )
                    continue
                if attempt.error is not None:
                    if _no_verdict(attempt.error):
                        continue
                    fields = failed(attempt.error)
                elif i == last_ok:
                    fields = graded or {"success": True}
                    served_by = served
                else:  # an answer an inner middleware discarded (and retried)
                    fields = {"success": True}
                self._pool.finish(planned, attempt.latency_ms, fields, attempt.tokens, served)
            return served_by
        except Exception as exc:
            self._warn("telemetry", "tally_langchain: telemetry was not recorded", exc)
            return planned.name


@contextmanager
def _observed() -> Iterator[_Attempts]:
    """Every chat-model run started inside the block reports to the ``_Attempts`` yielded."""
    attempts = _Attempts()
    token = _attempts.set(attempts)
    try:
        yield attempts
    finally:
        _attempts.reset(token)


def _system_message(request: ModelRequest) -> BaseMessage | None:
    message = getattr(request, "system_message", None)  # langchain >= 1.1
    if isinstance(message, BaseMessage):
        return message
    prompt = getattr(request, "system_prompt", None)  # langchain 1.0
    return SystemMessage(prompt) if isinstance(prompt, str) and prompt else None


def _with_model(request: ModelRequest, model: BaseChatModel | None) -> ModelRequest:
    if model is None or model is request.model:
        return request
    return request.override(model=model)


def _ai_message(response: Any) -> AIMessage | None:
    if isinstance(response, AIMessage):
        return response
    if isinstance(response, ExtendedModelResponse):
        response = response.model_response
    for message in getattr(response, "result", None) or ():
        if isinstance(message, AIMessage):
            return message
    return None


def _stamp_response(response: Any, planned: Planned, served: str) -> Any:
    """The response with the decision on its AI message (a copy; never raises)."""
    try:
        meta = {**planned.meta, "model": served}
        if isinstance(response, AIMessage):
            return stamped(response, meta)
        if isinstance(response, ExtendedModelResponse):
            inner = _stamp_response(response.model_response, planned, served)
            return dataclasses.replace(response, model_response=inner)
        if isinstance(response, ModelResponse):
            result = list(response.result)
            for i, message in enumerate(result):
                if isinstance(message, AIMessage):
                    result[i] = stamped(message, meta)
                    break
            return dataclasses.replace(response, result=result)
    except Exception:  # an unexpected response shape: hand it on as it is
        pass
    return response
