"""TallyCallbackHandler: telemetry for any LangChain chat model, and
``auto_telemetry`` to attach it to every run without passing callbacks."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from tally_core import InvalidFieldError, Tally
from tally_core.envelope import normalise_task_type
from tally_langchain._common import (
    DEFAULT_TASK_TYPE,
    MIDDLEWARE_CALL,
    TALLY_MODEL_KEY,
    LogOnce,
    Scorer,
    error_name,
    first_message,
    outcome,
    result_tokens,
    send_telemetry,
)

__all__ = ["AutoTelemetry", "TallyCallbackHandler", "auto_telemetry"]

_MAX_OPEN_RUNS = 10_000


class _Run:
    __slots__ = ("started", "model", "task_type", "org", "messages")

    def __init__(
        self,
        started: float,
        model: str,
        task_type: str,
        org: str | None,
        messages: Sequence[BaseMessage] | None,
    ) -> None:
        self.started = started
        self.model = model
        self.task_type = task_type
        self.org = org
        self.messages = messages


class TallyCallbackHandler(BaseCallbackHandler):
    """Sends Tally telemetry for every chat-model call it sees.

    For chat models Tally did not route: each call is recorded for the model
    that served it (``ls_model_name`` from the run's metadata, else the
    model's class) and a task type, with tokens, latency, and success or the
    error's class. Calls made by ``ChatTally`` are skipped: it records them
    itself.

    Parameters
    ----------
    tally
        Where telemetry goes.
    task_type
        Task type to record calls under. Per call,
        ``config={"metadata": {"tally": {"task_type": ..., "org": ...}}}`` wins.
    org
        Tenant to record calls under (default: Tally's ``default``).
    model
        Record every call under this model name instead of the one the run
        reports (for a handler attached to one model).
    scorer
        ``fn(messages, ai_message) -> float | bool | None``, as for ChatTally.
        Callbacks are synchronous: an async scorer is awaited only in sync
        code (on an event loop the call counts by success alone; use
        ChatTally's scorer there).

    Callbacks run on the caller's thread (``run_inline``: on the event loop
    in async code); each does O(1) work and hands the record to Tally's
    queue. Nothing raises into the chain.

    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from tally_core import ModelSpec, Tally
    >>> tally = Tally([ModelSpec(name="fake", input_cost_per_mtok=1, output_cost_per_mtok=2)],
    ...               store=":memory:", background=False)
    >>> handler = TallyCallbackHandler(tally, task_type="qa-simple", model="fake")
    >>> FakeListChatModel(responses=["4"]).invoke("2 + 2?", {"callbacks": [handler]}).content
    '4'
    >>> [(r["model"], r["task_type"], r["success"]) for r in tally.ledger.rows()]
    [('fake', 'qa-simple', 1)]
    >>> tally.close()
    """

    run_inline = True
    raise_error = False

    def __init__(
        self,
        tally: Tally,
        *,
        task_type: str = DEFAULT_TASK_TYPE,
        org: str | None = None,
        model: str | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        if not isinstance(tally, Tally):
            raise InvalidFieldError("tally", f"must be a Tally, got {type(tally).__name__}")
        super().__init__()
        self.tally = tally
        try:
            self.task_type = normalise_task_type(task_type)
        except (ValueError, AttributeError) as exc:
            raise InvalidFieldError("task_type", str(exc)) from None
        self.org = org
        self.model = model
        self.scorer = scorer
        self._runs: OrderedDict[UUID, _Run] = OrderedDict()
        self._lock = threading.Lock()
        self._warn = LogOnce()

    # -- run start -----------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(
            serialized, messages[0] if messages else None, run_id, metadata, kwargs
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(serialized, None, run_id, metadata, kwargs)

    def _start(
        self,
        serialized: Mapping[str, Any] | None,
        messages: Sequence[BaseMessage] | None,
        run_id: UUID,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        try:
            md = metadata or {}
            if TALLY_MODEL_KEY in md:
                return  # a ChatTally child: ChatTally records it
            if MIDDLEWARE_CALL.get() is not None:
                return  # inside a TallyMiddleware model call, which records it
            params = kwargs.get("invocation_params")
            if isinstance(params, Mapping) and params.get("_type") == "tally":
                return  # ChatTally's own run on the legacy generate() path
            model = self.model or _served_model(md, serialized)
            task_type, org = self.task_type, self.org
            per_call = md.get("tally")
            if isinstance(per_call, str):
                task_type = per_call
            elif isinstance(per_call, Mapping):
                task_type = per_call.get("task_type") or task_type
                org = per_call.get("org") or org
            run = _Run(
                time.perf_counter(),
                model,
                task_type,
                org,
                messages if self.scorer is not None else None,
            )
            with self._lock:
                self._runs[run_id] = run
                if len(self._runs) > _MAX_OPEN_RUNS:  # runs that never ended
                    self._runs.popitem(last=False)
        except Exception as exc:
            self._warn("start", "tally_langchain: could not track a run", exc)

    # -- run end -------------------------------------------------------------

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        try:
            latency_ms = (time.perf_counter() - run.started) * 1000.0
            message = first_message(response)
            tin, tout = result_tokens(message, response.llm_output)
            fields = outcome(self.scorer, run.messages, message, self._warn)
            self._send(run, latency_ms=latency_ms, input_tokens=tin, output_tokens=tout, **fields)
        except Exception as exc:
            self._warn("end", "tally_langchain: telemetry was not recorded", exc)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._pop(run_id)
        if run is None:
            return
        try:
            latency_ms = (time.perf_counter() - run.started) * 1000.0
            self._send(run, latency_ms=latency_ms, success=False, error=error_name(error))
        except Exception as exc:
            self._warn("error", "tally_langchain: telemetry was not recorded", exc)

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def _send(self, run: _Run, **fields: Any) -> None:
        send_telemetry(
            self.tally,
            self._warn,
            None,
            model=run.model,
            task_type=run.task_type,
            org=run.org,
            **fields,
        )

    def __repr__(self) -> str:
        return f"TallyCallbackHandler(task_type={self.task_type!r}, tally={self.tally!r})"


def _served_model(metadata: Mapping[str, Any], serialized: Mapping[str, Any] | None) -> str:
    name = metadata.get("ls_model_name")
    if isinstance(name, str) and name:
        return name
    ident = (serialized or {}).get("id")
    if isinstance(ident, list) and ident and isinstance(ident[-1], str):
        return ident[-1]
    return "unknown"


# -- auto_telemetry ------------------------------------------------------------

_auto_handler: ContextVar[TallyCallbackHandler | None] = ContextVar(
    "tally_langchain_auto_telemetry", default=None
)
# Once, at import: LangChain has no way to unregister a hook.
register_configure_hook(_auto_handler, inheritable=True)


class AutoTelemetry:
    """Handle returned by ``auto_telemetry``: ``stop()`` or use it with ``with``."""

    def __init__(self, handler: TallyCallbackHandler) -> None:
        self.handler = handler
        self._token: Token[TallyCallbackHandler | None] | None = _auto_handler.set(handler)

    def stop(self) -> None:
        """Detach the handler (idempotent)."""
        if self._token is not None:
            try:
                _auto_handler.reset(self._token)
            except ValueError:  # set in another context: detach there
                _auto_handler.set(None)
            self._token = None

    def __enter__(self) -> TallyCallbackHandler:
        return self.handler

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def auto_telemetry(
    tally: Tally,
    *,
    task_type: str = DEFAULT_TASK_TYPE,
    org: str | None = None,
    scorer: Scorer | None = None,
) -> AutoTelemetry:
    """Record telemetry for every LangChain chat-model call, no callbacks passed.

    Attaches a ``TallyCallbackHandler`` to every run started in the current
    context -- this thread or task, and whatever LangChain runs from it
    (``batch`` thread pools, asyncio tasks created later). Use it as a
    context manager, or call it once at start-up and ``stop()`` it later.

    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from tally_core import ModelSpec, Tally
    >>> tally = Tally([ModelSpec(name="fake", input_cost_per_mtok=1, output_cost_per_mtok=2)],
    ...               store=":memory:", background=False)
    >>> with auto_telemetry(tally, task_type="qa-simple"):
    ...     _ = FakeListChatModel(responses=["4"]).invoke("2 + 2?")
    >>> [r["task_type"] for r in tally.ledger.rows()]
    ['qa-simple']
    >>> tally.close()
    """
    handler = TallyCallbackHandler(tally, task_type=task_type, org=org, scorer=scorer)
    return AutoTelemetry(handler)
