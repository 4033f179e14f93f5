"""One routed call, from envelope to telemetry: what ChatTally and TallyMiddleware share.

A ``_Pool`` holds the child chat models by their Tally name and what they can
take (tool calling, context window). ``plan()`` builds the envelope of one
call (the shape of the task, never its content), asks ``tally.route()`` and
fails open to the fallback; ``finish()`` reports the outcome. Both run on the
caller's thread or event loop, do O(1) work and never raise into the call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from pydantic import ValidationError

from tally_core import Envelope, InvalidFieldError, NoCandidateError, RouteDecision, Tally
from tally_core.infer import infer_fields
from tally_core.shadow import ShadowCopies
from tally_langchain._common import (
    DEFAULT_TASK_TYPE,
    TALLY_MODEL_KEY,
    LogOnce,
    Scorer,
    aoutcome,
    error_name,
    outcome,
    result_tokens,
    send_telemetry,
)

__all__ = [
    "CANCELLED",
    "Planned",
    "Pool",
    "envelope_dict",
    "failed",
    "invalid_field",
    "ls_model_name",
    "ms_since",
    "name_models",
    "per_call_envelope",
    "stamp",
    "stamped",
]

# The caller stopped early (or the agent was interrupted): no verdict on the model.
CANCELLED: tuple[type[BaseException], ...] = (
    GeneratorExit,
    KeyboardInterrupt,
    asyncio.CancelledError,
)


@dataclass(slots=True)
class Planned:
    """What was chosen for one call, and what to report when it ends."""

    decision: RouteDecision | None
    name: str
    meta: dict[str, Any]
    task_type: str
    org: str
    #: The caller's own compliance rules for the call (``allowed_models`` /
    #: ``allowed_providers`` as given), which shadow copies obey too.
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)
    tools: int = 0


def name_models(value: Any) -> dict[str, BaseChatModel]:
    """``{name: chat_model}`` from a mapping, or from a list named by ``ls_model_name``."""
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
            name = ls_model_name(model)
            if name is None:
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


def ls_model_name(model: BaseChatModel) -> str | None:
    """The model name a chat model reports to LangSmith (``ls_model_name``), or None."""
    try:
        name = model._get_ls_params().get("ls_model_name")
    except Exception:  # a chat model whose params need arguments we do not have
        return None
    return name if isinstance(name, str) and name else None


def envelope_dict(value: Any, field: str) -> dict[str, Any]:
    """Envelope fields from an ``Envelope``, a mapping, a task type or None."""
    if value is None:
        return {}
    if isinstance(value, Envelope):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, str):
        return {"task_type": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise InvalidFieldError(
        field, f"must be a mapping of envelope fields, an Envelope or a task type, "
        f"got {type(value).__name__}"
    )


def per_call_envelope(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The envelope a call carries in ``config={"metadata": {"tally": ...}}``."""
    per_call = metadata.get("tally") if metadata else None
    return envelope_dict(per_call, "metadata.tally")


class Pool:
    """The child chat models of one adapter, keyed by their name in the Tally pool."""

    def __init__(
        self,
        tally: Any,
        models: dict[str, BaseChatModel],
        envelope: Mapping[str, Any],
        warn: LogOnce,
        infer_envelope: bool = True,
    ) -> None:
        if not isinstance(tally, Tally):
            raise InvalidFieldError("tally", f"must be a Tally, got {type(tally).__name__}")
        if not models:
            raise InvalidFieldError("models", "needs at least one chat model")
        pool = set(tally.catalog.names)
        unknown = sorted(set(models) - pool)
        if unknown:
            raise InvalidFieldError(
                "models",
                f"{', '.join(map(repr, unknown))} not in the Tally pool "
                f"({', '.join(tally.catalog.names)}); name each chat model as the pool does",
            )
        if tally.fallback not in models:
            raise InvalidFieldError("models", f"no chat model for the fallback {tally.fallback!r}")
        default = dict(envelope)
        # The envelope as the user gave it: a task type they did not give may be inferred.
        self._given = dict(default)
        default.setdefault("task_type", DEFAULT_TASK_TYPE)
        Envelope(**default)  # raises InvalidFieldError naming the bad field
        self.tally: Tally = tally
        self.models = models
        self.default = default
        self.warn = warn
        self.infer_envelope = infer_envelope
        self._pool_extra = bool(pool - set(models))
        self._no_tools = frozenset(n for n, m in models.items() if not can_call_tools(m))
        self._windows = {
            n: w for n, m in models.items() if (w := max_input_tokens(m)) is not None
        }
        self.copies = ShadowCopies(tally, warn)
        # tally.flush() waits for this pool's shadow copies, for as long as the pool lives.
        copies = weakref.ref(self.copies)

        def _wait(timeout: float | None) -> bool:
            c = copies()
            return True if c is None else c.wait(timeout)

        weakref.finalize(self.copies, tally.add_flush_waiter(_wait))

    @property
    def fallback(self) -> str:
        return self.tally.fallback

    # -- routing -------------------------------------------------------------

    def plan(
        self,
        per_call: Any,
        messages: Sequence[BaseMessage],
        *,
        tools: int = 0,
        structured: bool = False,
        pin: str | None = None,
    ) -> Planned:
        """Route one call; on any Tally error, the fallback (logged once).

        ``per_call`` is the call's own envelope (a mapping, an ``Envelope``, a
        task type or None) over the pool's default.
        """
        env: dict[str, Any] = self.default
        decision: RouteDecision | None = None
        name = pin or self.fallback
        rules: dict[str, Any] = {}
        try:
            env, inferred = self._envelope(per_call, messages, tools, structured, pin)
            given = {**self._given, **envelope_dict(per_call, "metadata.tally")}
            rules = {k: given[k] for k in ("allowed_models", "allowed_providers")
                     if given.get(k) is not None}
            decision = self.tally.route(env)
            if inferred:
                decision = dataclasses.replace(decision, inferred=inferred)
            name = decision.model
            if name not in self.models:
                self.warn(
                    "unserved",
                    f"tally_langchain: Tally chose {name!r}, which has no chat model here; "
                    f"using {self.fallback!r}",
                )
                name = pin or self.fallback
        except NoCandidateError as exc:
            # Compliance beats failing open: no permitted model can take this call, and the
            # fallback may be a forbidden one, so the caller gets the error naming the rule.
            # Only a call pinned by the caller's own code (a fallback middleware) to a model
            # its envelope excludes goes ahead on that pin, unless the org has rules.
            org = env.get("org")
            if pin is None or self.tally.org_policies.rules(org if isinstance(org, str)
                                                            else "default") is not None:
                raise
            decision, name = None, pin
            self.warn("route", f"tally_langchain: routing failed; using {name!r} (fail open)", exc)
        except Exception as exc:
            decision, name = None, self._fail_open_model(env, pin)
            self.warn("route", f"tally_langchain: routing failed; using {name!r} (fail open)", exc)
        if decision is not None:
            meta: dict[str, Any] = {
                "decision_id": decision.decision_id,
                "model": name,
                "phase": decision.phase,
                "confidence": round(decision.confidence, 6),
                "task_type": decision.task_type,
            }
            if decision.inferred:
                meta["inferred"] = list(decision.inferred)
        else:
            meta = {"decision_id": None, "model": name, "phase": "fallback", "routed": False}
        task_type, org = env.get("task_type"), env.get("org")
        return Planned(
            decision=decision,
            name=name,
            meta=meta,
            task_type=task_type if isinstance(task_type, str) else self.default["task_type"],
            org=org if isinstance(org, str) else "default",
            rules=rules,
            tools=tools,
        )

    def unrouted(self, per_call: Any, name: str) -> Planned:
        """A call another component chose the model for: recorded, not routed."""
        env = dict(self.default)
        try:
            env.update(envelope_dict(per_call, "metadata.tally"))
        except InvalidFieldError:  # a bad per-call envelope: the default's task type
            pass
        task_type, org = env.get("task_type"), env.get("org")
        return Planned(
            decision=None,
            name=name,
            meta={"decision_id": None, "model": name, "phase": "fallback", "routed": False},
            task_type=task_type if isinstance(task_type, str) else self.default["task_type"],
            org=org if isinstance(org, str) else "default",
        )

    def _envelope(
        self,
        per_call: Any,
        messages: Sequence[BaseMessage],
        tools: int,
        structured: bool,
        pin: str | None,
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The call's envelope, and the fields inferred from its messages."""
        given = dict(self._given)
        given.update(envelope_dict(per_call, "metadata.tally"))
        env = {**self.default, **given}
        inferred: tuple[str, ...] = ()
        if self.infer_envelope:
            # What the messages say (tally_core.infer, in process): given fields win.
            fields, names = infer_fields(
                messages, given, tools=[None] * tools if tools else None,
                response_format={"type": "json_object"} if structured else None,
                default=str(self.default["task_type"]),
            )
            if names:
                env = {**self.default, **fields, **given}
                inferred = names
            if tools and "tools_used" not in env:
                env["tools_used"] = tools
            if structured and "structure_type" not in env:
                env["structure_type"] = "json"
            if "context_length" not in env:
                env["context_length"] = count_tokens_approximately(messages)
        allowed = self._allowed(env, tools, pin)
        if allowed is not None:
            env["allowed_models"] = allowed
        return env, inferred

    def _allowed(
        self, env: Mapping[str, Any], tools: int, pin: str | None
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

    def _fail_open_model(self, env: Mapping[str, Any], pin: str | None) -> str:
        """The fallback, unless the call's ``allowed_models`` exclude it."""
        if pin is not None:
            return pin
        allowed = env.get("allowed_models")
        if isinstance(allowed, str):
            allowed = (allowed,)
        if isinstance(allowed, (list, tuple, set, frozenset)) and self.fallback not in allowed:
            served = sorted(str(n) for n in allowed if n in self.models)
            if served:
                return served[0]
        return self.fallback

    # -- telemetry -----------------------------------------------------------

    def finish(
        self,
        planned: Planned,
        latency_ms: float | None,
        fields: Mapping[str, Any],
        tokens: tuple[int | None, int | None],
        served: str | None = None,
    ) -> None:
        """Report one model call: O(1), and never raises into the call.

        ``served`` is the model that made the call when it is not the one
        planned (a retry on another model, a fallback middleware).
        """
        try:
            model = served or planned.name
            d = planned.decision
            if d is not None:
                where: dict[str, Any] = {"model": model if model != d.model else None}
            else:
                where = {"model": model, "task_type": planned.task_type, "org": planned.org}
            send_telemetry(
                self.tally,
                self.warn,
                d,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                latency_ms=latency_ms,
                **where,
                **fields,
            )
        except Exception as err:
            self.warn("telemetry", "tally_langchain: telemetry was not recorded", err)


    # -- shadow copies ---------------------------------------------------------

    def shadow(
        self,
        planned: Planned,
        messages: Sequence[BaseMessage],
        scorer: Scorer | None,
        *,
        served: str | None = None,
        bind: Callable[[str], Any] | None = None,
        stop: list[str] | None = None,
        is_async: bool = False,
    ) -> None:
        """After a call was answered: a copy to a shadow candidate, if one is drawn
        (``tally.shadow``), made in the background by the candidate's chat model and
        graded by ``scorer`` (``tally_core.shadow.ShadowCopies``). O(1) on the caller's
        thread and never raises. ``bind(name)`` gives the candidate's runnable with the
        call's tools bound (None: the chat model itself)."""
        try:
            if not self.tally.shadows.active:
                return
            def available(name: str) -> bool:  # a child that can take this call
                return name in self.models and not (planned.tools and name in self._no_tools)

            rules = planned.rules
            if isinstance(rules.get("allowed_models"), str):
                rules = {**rules, "allowed_models": (rules["allowed_models"],)}
            copy = self.copies.plan(planned.decision, served or planned.name, rules=rules,
                                    available=available)
            if copy is None:
                return
            msgs = list(messages)
            name = copy.model
            # Its own run, tagged so TallyCallbackHandler leaves it (recorded here).
            config: Any = {"callbacks": [], "metadata": {
                TALLY_MODEL_KEY: name, "tally_shadow_of": planned.meta.get("decision_id")}}
            extra = {"stop": stop} if stop else {}
            warn, copies = self.warn, self.copies

            def runnable() -> Any:
                return bind(name) if bind is not None else self.models[name]

            if is_async:
                async def ajob() -> None:
                    started = time.perf_counter()
                    try:
                        message = await runnable().ainvoke(msgs, config, **extra)
                    except Exception as exc:
                        copies.failed(copy, exc, started)
                        return
                    latency_ms = ms_since(started)
                    fields = await aoutcome(scorer, msgs, message, warn)
                    tokens = result_tokens(message, None)
                    copies.record(copy, started, latency_ms=latency_ms, input_tokens=tokens[0],
                                  output_tokens=tokens[1], **fields)

                copies.start_async(ajob)
                return

            def job() -> None:
                started = time.perf_counter()
                try:
                    message = runnable().invoke(msgs, config, **extra)
                except Exception as exc:
                    copies.failed(copy, exc, started)
                    return
                latency_ms = ms_since(started)
                fields = outcome(scorer, msgs, message, warn)
                tokens = result_tokens(message, None)
                copies.record(copy, started, latency_ms=latency_ms, input_tokens=tokens[0],
                              output_tokens=tokens[1], **fields)

            copies.start(job)
        except Exception as err:
            self.warn("shadow", "tally_langchain: no shadow copy was made", err)


def can_call_tools(model: BaseChatModel) -> bool:
    if type(model).bind_tools is BaseChatModel.bind_tools:
        return False
    profile = getattr(model, "profile", None)  # langchain-core >= 1.1
    return not (isinstance(profile, dict) and profile.get("tool_calling") is False)


def max_input_tokens(model: BaseChatModel) -> int | None:
    profile = getattr(model, "profile", None)  # langchain-core >= 1.1
    if isinstance(profile, dict):
        value = profile.get("max_input_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def failed(exc: BaseException) -> dict[str, Any]:
    """The outcome fields of a call that raised (none when the caller stopped it)."""
    if isinstance(exc, CANCELLED):
        return {}
    return {"success": False, "error": error_name(exc)}


def stamped(message: BaseMessage, meta: Mapping[str, Any], model_name: str | None = None) -> Any:
    """A shallow copy with the decision in ``response_metadata["tally"]``.

    A copy, because a child's cache may hand the same message to many calls.
    ``model_name`` fills ``response_metadata["model_name"]`` when the child
    left it unset, so callers that read it see the routed model.
    """
    try:
        metadata = {**message.response_metadata, "tally": dict(meta)}
        if model_name is not None:
            metadata.setdefault("model_name", model_name)
        return message.model_copy(update={"response_metadata": metadata})
    except Exception:  # not a pydantic message: leave it as it is
        return message


def stamp(message: BaseMessage, meta: Mapping[str, Any]) -> None:
    """Put the decision on a (stream chunk) message in place."""
    try:
        message.response_metadata["tally"] = dict(meta)
    except Exception:  # a message type without response_metadata
        pass


def invalid_field(exc: ValidationError, owner: str) -> InvalidFieldError:
    """A pydantic error at construction as ``InvalidFieldError`` naming the field."""
    err = exc.errors(include_url=False)[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, InvalidFieldError):
        return original
    loc = err.get("loc") or (owner,)
    msg = str(err["msg"]).removeprefix("Value error, ")
    return InvalidFieldError(str(loc[0]), f"{msg}, got {type(err.get('input')).__name__}")
