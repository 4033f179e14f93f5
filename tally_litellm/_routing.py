"""The one routing-state object every LiteLLM hook shares.

``TallyStrategy`` (a custom routing strategy), ``TallyPlugin`` (a routing
plugin), ``TallyCallback`` (the logger that reports outcomes) and the proxy's
``TallyProxyHandler`` are thin classes over a ``RoutingState``: it holds the
``Tally``, the attempts routed and not yet reported, the deployment index and
the log-once guard, and does all the work. The hooks only translate LiteLLM's
call shapes into its methods.

Joining an outcome to its decision. Every attempt Tally routes gets an
``Attempt`` record, found again by LiteLLM's ``litellm_call_id``:

- as the routing strategy, Tally sets ``request_kwargs["litellm_call_id"]``
  itself before the attempt runs;
- as a routing plugin, or in the proxy's filter hook, the request's call id is
  not Tally's to set: the decision goes into the request metadata with an
  attempt id, and the logger's ``log_pre_api_call`` hook (which LiteLLM runs
  for every attempt, sync or async, before the provider is called) binds the
  attempt to the call id it carries.

``get_decision(response)`` reads ``response._hidden_params["litellm_call_id"]``,
which holds on every LiteLLM version and for streams too.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tally_core import Envelope, InvalidFieldError, NoCandidateError, RouteDecision, Tally
from tally_core.adapters import OnceLog, error_class, grade
from tally_core.catalog import load_price_map
from tally_core.envelope import coerce_envelope, normalise_task_type
from tally_core.infer import preload as preload_inference
from tally_litellm import _host
from tally_litellm._attempts import Attempt, AttemptLog, RoutedBy
from tally_litellm._deployments import DeploymentIndex, _price_map_name
from tally_litellm._envelope import ENVELOPE_KEY, _hashable, request_envelope
from tally_litellm._shadow import ShadowRunner

__all__ = [
    "DECISION_KEY",
    "HEADER_PREFIX",
    "SIGNAL_KEY",
    "Choice",
    "Mode",
    "RoutingState",
    "decision_headers",
    "get_decision",
    "log",
    "metadata_of",
    "state_of",
]

log = logging.getLogger("tally.litellm")

DECISION_KEY = "tally_decision"
HEADER_PREFIX = "x-tally-"
# LiteLLM's channel for what routing plugins tell the rest of the call.
SIGNAL_KEY = "tally"
# Where LiteLLM keeps a plugin narrowing for the filter that applies it.
NARROWED_KEY = "_routing_plugin_candidate_models"

Deployment = dict[str, Any]
Mode = Literal["strategy", "plugin", "hooks"]

# The proxy puts the authenticated caller in the request metadata under these
# keys; the first one present names the org (team, else the key itself).
AUTH_ORG_KEYS = ("user_api_key_team_id", "user_api_key_hash")


class _CallIndex:
    """A bounded, thread-safe map of LiteLLM call id to the attempt it ran.

    Shared by every routing state in the process, so ``get_decision`` needs
    no reference to the strategy that routed a response.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._items: OrderedDict[str, Attempt] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, call_id: str, attempt: Attempt) -> None:
        with self._lock:
            self._items[call_id] = attempt
            self._items.move_to_end(call_id)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)

    def get(self, call_id: Any) -> Attempt | None:
        return self._items.get(call_id) if isinstance(call_id, str) else None


_CALLS = _CallIndex()

# The state routing each router, by id (a router holds no reference to us).
_BOUND: dict[int, RoutingState] = {}


def state_of(router: Any) -> RoutingState | None:
    """The routing state installed on ``router``, or None."""
    state = _BOUND.get(id(router))
    return state if state is not None and state.router is router else None


def decision_headers(info: Mapping[str, Any]) -> dict[str, str]:
    """The ``x-tally-*`` response headers for a decision."""
    return {
        HEADER_PREFIX + key.replace("_", "-"): str(info[key])
        for key in ("decision_id", "model", "phase")
        if info.get(key) is not None
    }


def get_decision(response: Any) -> dict[str, Any] | None:
    """Tally's decision for a router response (plain or streamed), or None.

    Keys: ``decision_id`` (pass it to ``tally.feedback``), ``model``, ``phase``,
    ``confidence``, ``estimated_cost_usd``, ``task_type``, ``org``,
    ``model_group``, ``deployment_id``, ``routed_by`` (``tally``,
    ``fail-open`` or ``litellm`` for a hop to a group outside the pool) and
    ``call_id``. Joined by the response's ``litellm_call_id``; the decision is
    also stamped on ``response._hidden_params["tally"]`` and the ``x-tally-*``
    headers on ``_hidden_params["additional_headers"]``.
    """
    hidden = getattr(response, "_hidden_params", None)
    if not isinstance(hidden, dict):
        return None
    attempt = _CALLS.get(hidden.get("litellm_call_id"))
    if attempt is None:
        info = hidden.get("tally")
        return dict(info) if isinstance(info, Mapping) else None
    info = attempt.info()
    if info["deployment_id"] is None or info["model"] is None:
        served = hidden.get("model_id")
        if isinstance(served, str):
            info["deployment_id"] = info["deployment_id"] or served
            if info["model"] is None and attempt.resolve_name is not None:
                info["model"] = attempt.resolve_name(served)
    try:
        hidden["tally"] = dict(info)
        headers = hidden.get("additional_headers")
        if not isinstance(headers, dict):
            headers = hidden["additional_headers"] = {}
        headers.update(decision_headers(info))
    except Exception:  # a read-only response: the returned decision is what matters
        pass
    return info


def metadata_of(kw: dict[str, Any]) -> dict[str, Any]:
    """The request's metadata dict (the one the router and the loggers share)."""
    name = "litellm_metadata" if "litellm_metadata" in kw else "metadata"
    md = kw.get(name)
    if not isinstance(md, dict):
        md = kw[name] = {}
    return md


def _logged_metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The request metadata as a log event carries it."""
    params = kwargs.get("litellm_params")
    md = params.get("metadata") if isinstance(params, Mapping) else None
    if not isinstance(md, Mapping) or not md:
        alt = params.get("litellm_metadata") if isinstance(params, Mapping) else None
        md = alt if isinstance(alt, Mapping) else md
    return md if isinstance(md, Mapping) else {}


def plugin_signal(metadata: Any) -> Mapping[str, Any] | None:
    """The decision a routing plugin left in a request's metadata, or None."""
    signals = metadata.get("routing_plugin_signals") if isinstance(metadata, Mapping) else None
    info = signals.get(SIGNAL_KEY) if isinstance(signals, Mapping) else None
    return info if isinstance(info, Mapping) else None


def _stamped(metadata: Any) -> Mapping[str, Any] | None:
    """The decision Tally stamped on a request's metadata (any mode), or None."""
    info = metadata.get(DECISION_KEY) if isinstance(metadata, Mapping) else None
    return info if isinstance(info, Mapping) else plugin_signal(metadata)


def _model_string(deployment: Mapping[str, Any]) -> Any:
    params = deployment.get("litellm_params")
    return params.get("model") if isinstance(params, Mapping) else None


@dataclass(slots=True)
class Choice:
    """What routing one attempt came to, before a deployment is drawn."""

    deployments: list[Deployment]  # the chosen model's usable ones; empty: no pool model
    model: str | None
    routed_by: RoutedBy
    task_type: str
    org: str
    decision: RouteDecision | None = None
    rules: dict[str, Any] | None = None  # the caller's allowed_models / allowed_providers
    inferred: tuple[str, ...] = ()  # envelope fields read off the messages


class RoutingState:
    """The Tally, its attempts in flight and everything else the hooks share.

    Parameters
    ----------
    tally, scorer, default_envelope, task_type
        As for ``TallyStrategy``.
    org_from_auth
        The proxy: each request's org is its authenticated caller's
        (``AUTH_ORG_KEYS`` in the metadata), not what the request body says.
    allow_client_org
        With ``org_from_auth``: let a request's ``metadata.tally.org`` win.
    infer
        Read the task type and complexity off the messages when the request
        does not give them (``tally_core.infer``); False keeps the defaults.
    """

    def __init__(
        self,
        tally: Tally,
        *,
        scorer: Callable[..., Any] | None = None,
        default_envelope: Mapping[str, Any] | Envelope | None = None,
        task_type: str = "general",
        org_from_auth: bool = False,
        allow_client_org: bool = False,
        infer: bool = True,
    ) -> None:
        if not isinstance(tally, Tally):
            raise InvalidFieldError("tally", f"must be a Tally, got {type(tally).__name__}")
        if scorer is not None and not callable(scorer):
            raise InvalidFieldError("scorer", f"must be callable, got {type(scorer).__name__}")
        try:
            task = normalise_task_type(task_type)
        except (ValueError, AttributeError) as exc:
            raise InvalidFieldError("task_type", str(exc)) from None
        defaults: dict[str, Any] = {"task_type": task}
        if isinstance(default_envelope, Envelope):
            defaults.update(default_envelope.model_dump(exclude_unset=True))
        elif isinstance(default_envelope, Mapping):
            defaults.update(default_envelope)
        elif default_envelope is not None:
            raise InvalidFieldError(
                "default_envelope",
                f"must be a mapping or an Envelope, got {type(default_envelope).__name__}",
            )
        coerce_envelope(defaults)  # a bad default is a configuration error: raise now
        self.tally = tally
        self.scorer = scorer
        self.task_type = task
        self.default_envelope = dict(defaults)
        self.org_from_auth = org_from_auth
        self.allow_client_org = allow_client_org
        if not isinstance(infer, bool):
            raise InvalidFieldError("infer", f"must be True or False, got {infer!r}")
        self.infer = infer
        if infer:
            preload_inference()  # the first routed call must not pay for loading it
        self.router: Any = None
        self.mode: Mode | None = None
        self.attempts = AttemptLog()
        self.once = OnceLog(log)
        self._defaults = _hashable(defaults)
        self._rng = random.Random(tally.seed)
        self._index = DeploymentIndex(tally.catalog.names)
        self._index_key = tuple(tally.catalog.names)
        self._names_by_id: dict[str, str] = {}
        self._remove_waiter: Callable[[], None] | None = None
        self.shadow_runner = ShadowRunner(self)

    @property
    def errors(self) -> dict[str, int]:
        """Errors swallowed so far (routing that failed open, telemetry, scorer), by kind."""
        return dict(self.once.counts)

    # -- binding -------------------------------------------------------------

    def bind(self, router: Any, mode: Mode) -> None:
        """Route ``router``'s calls; ``tally.flush()`` waits for their outcomes from now on."""
        self.router, self.mode = router, mode
        _BOUND[id(router)] = self
        if self._remove_waiter is None:
            self._remove_waiter = self.tally.add_flush_waiter(self.wait)

    def unbind(self) -> None:
        if self.router is not None and _BOUND.get(id(self.router)) is self:
            del _BOUND[id(self.router)]
        self.router, self.mode = None, None

    def release(self) -> None:
        """Stop taking part in ``tally.flush()`` (the adapter is closed)."""
        self.shadow_runner.close()
        if self._remove_waiter is not None:
            self._remove_waiter()
            self._remove_waiter = None

    def pool_index(self) -> DeploymentIndex:
        names = tuple(self.tally.catalog.names)
        if names != self._index_key:
            self._index, self._index_key = DeploymentIndex(names), names
        return self._index

    def warn_if_no_pool_model(self, router: Any) -> None:
        index = self.pool_index()
        if not any(index.pool_name(d) for d in _host.all_deployments(router)):
            log.warning(
                "tally: no deployment of this router serves a model in the pool %s; "
                "LiteLLM will route every call", self.tally.catalog.names,
            )

    # -- deciding ------------------------------------------------------------

    def envelope(
        self, md: Mapping[str, Any], messages: Sequence[Any] | None, kw: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The envelope of one request: defaults, what it shows, ``metadata["tally"]``."""
        return self.envelope_inferred(md, messages, kw)[0]

    def envelope_inferred(
        self, md: Mapping[str, Any], messages: Sequence[Any] | None, kw: Mapping[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """``envelope``, and the fields inferred from the messages (``tally_core.infer``)."""
        given = md.get(ENVELOPE_KEY)
        env, inferred = request_envelope(self._defaults, given, messages, kw,
                                         infer_task=self.infer,
                                         on_infer_error=self._infer_failed)
        if self.org_from_auth:
            auth = next((md[k] for k in AUTH_ORG_KEYS if isinstance(md.get(k), str) and md[k]),
                        None)
            asked = given.get("org") if isinstance(given, Mapping) else None
            if asked is not None and not self.allow_client_org:
                if asked != auth:
                    self.once.error(
                        "client-org", "tally: a request asked for org %r; the proxy binds the "
                        "org to the caller's team or key (allow_client_org=True lets clients "
                        "choose)", str(asked)[:64],
                    )
                asked = None
            org = asked if asked is not None else auth
            if org is not None:
                env["org"] = org
            else:
                env.pop("org", None)  # an unauthenticated call: the default org
        return env, inferred

    def _infer_failed(self, exc: BaseException) -> None:
        # The class only: a message or traceback could quote the prompt.
        self.once.error("infer", "tally: inferring the task type failed (%s); routing "
                        "without it", type(exc).__name__)

    def decide(
        self,
        group: Sequence[Deployment],
        md: Mapping[str, Any],
        messages: Sequence[Any] | None,
        kw: Mapping[str, Any],
        cooldowns: set[str],
    ) -> Choice | None:
        """What Tally picks among ``group``, or None when no deployment serves a pool model.

        When Tally (or the envelope) fails, the choice is the fallback
        model's deployments (``routed_by="fail-open"``), or none. The one error
        it lets through is ``NoCandidateError``: no model the call (or its
        org's compliance rules) permits can serve it, and failing open to the
        fallback could send it to a forbidden provider.
        """
        env: dict[str, Any] | None = None
        try:
            index = self.pool_index()
            in_pool = [(d, n) for d in group if (n := index.pool_name(d)) is not None]
            if not in_pool:
                return None  # a group outside the pool (a fallback hop, say)
            usable = _usable(in_pool, md, cooldowns)
            models = list(dict.fromkeys(n for _, n in usable))
            env, inferred = self.envelope_inferred(md, messages, kw)
            rules = {k: env[k] for k in ("allowed_models", "allowed_providers")
                     if env.get(k) is not None}
            if set(models) != set(self._index_key):
                # Only models this group can serve (and has not just failed on).
                given = env.get("allowed_models")
                env["allowed_models"] = (
                    tuple(models) if given is None else tuple(m for m in given if m in models)
                )
            decision = self.tally.route(env)
            picks = [d for d, n in usable if n == decision.model]
            if not picks:
                raise LookupError(f"no deployment in this group serves {decision.model!r}")
            # What was inferred travels with the attempt, not in a copy of the decision
            # (the decision stays the object route() made: telemetry takes it as is).
            return Choice(picks, decision.model, "tally", decision.task_type, decision.org,
                          decision, rules or None, inferred)
        except NoCandidateError:
            # Compliance beats failing open: no permitted model can serve this call, and
            # the fallback may be a forbidden one. The caller gets the error, naming the rule.
            raise
        except Exception as exc:
            self.once.error(
                "route", "tally: routing failed (%s: %s); failing open to %s",
                type(exc).__name__, str(exc)[:300], self.tally.fallback, exc_info=True,
            )
            return self._fail_open(group, md, env, cooldowns)

    def _fail_open(
        self,
        group: Sequence[Deployment],
        md: Mapping[str, Any],
        env: Mapping[str, Any] | None,
        cooldowns: set[str],
    ) -> Choice:
        """The fallback model's deployments, or none, for a failed route."""
        task_type, org = self.task_type, "default"
        try:
            if env is not None:
                try:
                    e = coerce_envelope(env)
                    task_type, org = e.task_type, e.org
                except Exception:  # the envelope was what failed: use the defaults
                    pass
            fallback = self.tally.fallback
            index = self.pool_index()
            mine = [(d, fallback) for d in group if index.pool_name(d) == fallback]
            usable = _usable(mine, md, cooldowns) if mine else []
            return Choice([d for d, _ in usable], fallback if usable else None, "fail-open",
                          task_type, org)
        except Exception:
            self.once.error("fail-open", "tally: could not pick the fallback deployment",
                            exc_info=True)
            return Choice([], None, "fail-open", task_type, org)

    # -- the strategy's pick ---------------------------------------------------

    def group(self, model: str) -> list[Deployment]:
        """The deployments of a model group, read once per pick. Never raises."""
        try:
            return _host.group_deployments(self.router, model)
        except Exception:
            self.once.error("deployments", "tally: could not read the router's deployments",
                            exc_info=True)
            return []

    def pick(
        self,
        model: str,
        messages: Sequence[Any] | None,
        input: Any,
        specific_deployment: bool | None,
        kw: dict[str, Any],
        group: list[Deployment],
        cooldowns: set[str],
    ) -> Deployment:
        """The deployment for one attempt: Tally's choice, else a weighted shuffle.

        LiteLLM's own pick is not reachable once a custom strategy is
        registered, so when Tally has no say (an embedding, a named
        deployment, a group outside the pool, a failed route without a
        fallback deployment) the group is shuffled here, skipping what is
        paused or cooling down. Raises only what LiteLLM would: no deployment.
        """
        router = self.router
        if router is None:
            raise RuntimeError(
                "TallyStrategy is not installed: call strategy.install(router) instead of "
                "registering it on the router yourself"
            )
        md = metadata_of(kw)
        if specific_deployment:
            named = [d for d in _host.all_deployments(router)
                     if _host.deployment_id(d) == model or _model_string(d) == model]
            if named:
                return named[0]
        if not group:
            raise ValueError(f"no deployment of this router serves model group {model!r}")
        if input is not None or specific_deployment:
            return _host.choose([d for d, _ in _usable([(d, "") for d in group], md, cooldowns)],
                                self._rng)
        choice = self.decide(group, md, messages, kw, cooldowns)
        if choice is not None and choice.deployments:
            dep = _host.choose(choice.deployments, self._rng)
            self.record(kw, md, model, dep, choice.model, choice.routed_by,
                        decision=choice.decision, task_type=choice.task_type, org=choice.org,
                        rules=choice.rules, inferred=choice.inferred)
            return dep
        dep = _host.choose([d for d, _ in _usable([(d, "") for d in group], md, cooldowns)],
                           self._rng)
        try:
            if choice is not None:  # failed open without a fallback deployment
                self.record(kw, md, model, dep, self.name_of(dep), "fail-open",
                            task_type=choice.task_type, org=choice.org)
            else:
                self.record_hop(kw, md, model, dep)
        except Exception:
            self.once.error("record", "tally: could not record an attempt", exc_info=True)
        return dep

    def record_hop(
        self, kw: dict[str, Any], md: dict[str, Any], model: str, dep: Deployment | None
    ) -> None:
        """A hop to a group outside the pool, of a request Tally routed: reported against
        that request's decision, for the model that served it."""
        prev = _stamped(md)
        before = self.attempts.get(prev.get("call_id")) if prev is not None else None
        if before is None or before.trace_id != kw.get("litellm_trace_id"):
            return
        self.record(
            kw, md, model, dep, self.name_of(dep) if dep is not None else None, "litellm",
            decision=before.decision, decision_id=before.decision_id,
            task_type=before.task_type, org=before.org,
        )

    # -- filter hook (the proxy) -----------------------------------------------

    def filter(
        self,
        model: str,
        healthy: list[Deployment],
        messages: Sequence[Any] | None,
        kw: dict[str, Any] | None,
    ) -> list[Deployment]:
        """Keep only the deployment Tally picks among those LiteLLM offers. Never raises.

        LiteLLM calls this (``CustomLogger.async_filter_deployments``) with the
        group's deployments that passed its health, cooldown and plugin checks;
        its routing strategy then picks among what is left. The request kwargs
        may be a copy: the decision goes into the metadata, which is shared.
        """
        if kw is None or not healthy:
            return healthy
        try:
            if messages is None or kw.get("specific_deployment"):
                return healthy  # not a chat call, or the caller named a deployment
            md = metadata_of(kw)
            group = _plugin_survivors(healthy, md)
            try:
                choice = self.decide(group, md, messages, kw, set())
            except NoCandidateError as exc:
                self.once.error("compliance", "tally: %s", str(exc)[:300])
                return []  # nothing permitted: LiteLLM refuses the call, never a forbidden model
            if choice is None:
                self.record_hop(kw, md, model, None)
                return healthy
            if not choice.deployments:
                self.record(kw, md, model, None, None, "fail-open",
                            task_type=choice.task_type, org=choice.org, own_id=False)
                return healthy
            dep = _host.choose(choice.deployments, self._rng)
            self.record(kw, md, model, dep, choice.model, choice.routed_by,
                        decision=choice.decision, task_type=choice.task_type, org=choice.org,
                        own_id=False, rules=choice.rules, inferred=choice.inferred)
            return [dep]
        except Exception:
            self.once.error("route", "tally: could not filter the deployments", exc_info=True)
            return healthy

    # -- plugin hook ---------------------------------------------------------

    def narrow(self, context: Any, cooldowns: set[str]) -> None:
        """A routing plugin's run: narrow ``context.candidate_models`` to Tally's model."""
        md = context.metadata
        group_name = md.get("model_group")
        if not isinstance(group_name, str):
            return
        allowed = set(context.candidate_models)  # what earlier plugins left
        group = [d for d in self.group(group_name) if _model_string(d) in allowed]
        if not group:
            # LiteLLM 1.110 runs a fallback hop's plugins with the first
            # group's name in the metadata: the candidates say which group it is.
            others = [d for d in _host.all_deployments(self.router)
                      if _model_string(d) in allowed]
            names = {d.get("model_name") for d in others}
            if len(names) == 1 and isinstance(hop := names.pop(), str):
                group_name, group = hop, others
        try:
            choice = self.decide(group, md, context.raw_messages, {}, cooldowns)
        except NoCandidateError:
            context.candidate_models = []  # nothing permitted: LiteLLM finds no deployment
            raise
        if choice is None:
            prev = plugin_signal(md)
            before = self.attempts.get(prev.get("call_id")) if prev is not None else None
            if before is not None:
                attempt = self.new_attempt(
                    str(uuid.uuid4()), None, group_name, None, None, "litellm",
                    decision=before.decision, decision_id=before.decision_id,
                    task_type=before.task_type, org=before.org,
                )
                context.signals[SIGNAL_KEY] = attempt.info()
            return
        deps = choice.deployments
        attempt = self.new_attempt(
            str(uuid.uuid4()), None, group_name, deps[0] if len(deps) == 1 else None,
            choice.model, choice.routed_by, decision=choice.decision,
            task_type=choice.task_type, org=choice.org,
        )
        attempt.rules, attempt.inferred = choice.rules, choice.inferred
        context.signals[SIGNAL_KEY] = attempt.info()
        keep = [m for m in dict.fromkeys(_model_string(d) for d in deps) if isinstance(m, str)]
        if keep:
            context.candidate_models = keep

    # -- attempts ------------------------------------------------------------

    def new_attempt(
        self,
        call_id: str,
        trace_id: Any,
        model_group: str,
        dep: Mapping[str, Any] | None,
        name: str | None,
        routed_by: RoutedBy,
        *,
        decision: RouteDecision | None = None,
        decision_id: str | None = None,
        task_type: str | None = None,
        org: str | None = None,
    ) -> Attempt:
        """A new attempt record, kept until its log event arrives."""
        attempt = Attempt(
            call_id=call_id,
            trace_id=trace_id if isinstance(trace_id, str) else None,
            model_group=model_group,
            deployment_id=_host.deployment_id(dep) if dep is not None else None,
            model=name,
            routed_by=routed_by,
            task_type=decision.task_type if decision is not None else (task_type or self.task_type),
            org=decision.org if decision is not None else (org or "default"),
            decision=decision,
            decision_id=decision.decision_id if decision is not None else decision_id,
            resolve_name=self.name_of_id,
        )
        self.attempts.add(attempt)
        _CALLS.put(call_id, attempt)
        return attempt

    def record(
        self,
        kw: dict[str, Any],
        md: dict[str, Any],
        model_group: str,
        dep: Mapping[str, Any] | None,
        name: str | None,
        routed_by: RoutedBy,
        *,
        decision: RouteDecision | None = None,
        decision_id: str | None = None,
        task_type: str | None = None,
        org: str | None = None,
        own_id: bool = True,
        rules: dict[str, Any] | None = None,
        inferred: tuple[str, ...] = (),
    ) -> None:
        """Record an attempt and stamp its decision on the request metadata.

        ``own_id``: Tally sets the attempt's ``litellm_call_id`` (the routing
        strategy may); otherwise the logger binds the call id LiteLLM gives.
        """
        call_id = kw.get("litellm_call_id") if own_id else None
        if not isinstance(call_id, str) or not call_id or self.attempts.get(call_id) is not None:
            # Each attempt gets its own id, so its log event finds this record.
            call_id = str(uuid.uuid4())
            if own_id:
                kw["litellm_call_id"] = call_id
        attempt = self.new_attempt(
            call_id, kw.get("litellm_trace_id"), model_group, dep, name, routed_by,
            decision=decision, decision_id=decision_id, task_type=task_type, org=org,
        )
        attempt.rules = rules
        attempt.inferred = inferred
        md[DECISION_KEY] = attempt.info()

    def bind_call(self, kwargs: Mapping[str, Any]) -> None:
        """``log_pre_api_call``: tie LiteLLM's call id to the attempt the metadata names."""
        call_id = kwargs.get("litellm_call_id")
        if not isinstance(call_id, str) or self.attempts.get(call_id) is not None:
            return
        info = _stamped(_logged_metadata(kwargs))
        attempt = self.attempts.get(info.get("call_id")) if info is not None else None
        if attempt is not None and not attempt.reported:
            self.attempts.alias(call_id, attempt)
            _CALLS.put(call_id, attempt)

    def claim(self, kwargs: Mapping[str, Any]) -> Attempt | None:
        """The attempt a log event reports, once; None if not Tally's or reported already."""
        attempt = self.attempts.claim(kwargs.get("litellm_call_id"))
        if attempt is None:
            info = _stamped(_logged_metadata(kwargs))
            if info is not None and self.mode in ("plugin", "hooks"):
                attempt = self.attempts.claim(info.get("call_id"))
        return attempt

    def finish(self, attempt: Attempt) -> None:
        self.attempts.finish(attempt)

    def grade(self, call_id: Any, quality: float) -> None:
        """A quality for one routed attempt, known after the call (a cascade's checks).

        Travels with the attempt's outcome when that has not been reported
        yet; else goes as ``tally.feedback`` once the outcome is in, so it
        replaces the quality the call was counted with instead of racing it.
        """
        attempt = self.attempts.get(call_id) or _CALLS.get(call_id)
        if attempt is None:
            return
        if not self.attempts.grade(attempt, quality) and attempt.decision_id is not None:
            self.tally.feedback(attempt.decision_id, quality=quality, model=attempt.model,
                                task_type=attempt.task_type, org=attempt.org)

    def wait(self, timeout: float | None) -> bool:
        """Until every attempt routed so far, and every shadow copy of one, has been
        reported (``tally.flush`` calls it)."""
        start = time.monotonic()
        if not self.attempts.wait(start, timeout):
            return False
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return self.shadow_runner.wait(left)

    # -- outcomes ------------------------------------------------------------

    def outcome(
        self, attempt: Attempt, kwargs: Mapping[str, Any], start: Any, end: Any, success: bool
    ) -> dict[str, Any]:
        """The telemetry fields of one logged attempt."""
        slo = kwargs.get("standard_logging_object")
        slo = slo if isinstance(slo, Mapping) else {}
        model = attempt.model
        # The deployment LiteLLM called, from this call's own params (not
        # slo["model_id"], read from metadata other calls may share).
        params = kwargs.get("litellm_params")
        info = params.get("model_info") if isinstance(params, Mapping) else None
        served = info.get("id") if isinstance(info, Mapping) else None
        if isinstance(served, str) and (
            model is None or (attempt.deployment_id and served != attempt.deployment_id)
        ):
            model = self.name_of_id(served) or model
        input_tokens = _count(slo.get("prompt_tokens"))
        output_tokens = _count(slo.get("completion_tokens"))
        cost = _amount(slo.get("response_cost"))
        if cost is None:
            cost = _amount(kwargs.get("response_cost"))
        latency_s = _amount(slo.get("response_time"))
        if latency_s is None and isinstance(start, datetime) and isinstance(end, datetime):
            latency_s = max((end - start).total_seconds(), 0.0)
        latency_ms = latency_s * 1000.0 if latency_s is not None else None
        if slo.get("cache_hit") is True:
            # No model ran: the latency and the price are the cache's, not the model's.
            latency_ms, cost = None, None
        error = None
        if not success:
            if not input_tokens and not output_tokens:
                input_tokens = output_tokens = None  # unknown, not zero
            exc = kwargs.get("exception")
            if isinstance(exc, BaseException):
                error = error_class(exc)
            else:
                einfo = slo.get("error_information")
                error = error_class(einfo.get("error_class") if isinstance(einfo, Mapping)
                                    else None)
        return {
            "model": model or "unknown",
            "success": success,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "latency_ms": latency_ms,
            "cost_usd": cost,
            "error": error,
            "quality": attempt.quality,
        }

    def score(
        self, attempt: Attempt, outcome: Mapping[str, Any], kwargs: Mapping[str, Any], response: Any
    ) -> Any:
        """The scorer's answer (maybe an awaitable); None when it raised."""
        assert self.scorer is not None
        md = _logged_metadata(kwargs)
        request = {
            "messages": kwargs.get("messages"),
            "model": outcome["model"],
            "model_group": attempt.model_group,
            "task_type": attempt.task_type,
            "decision_id": attempt.decision_id,
            "metadata": md,
            "optional_params": kwargs.get("optional_params") or {},
        }
        try:
            return self.scorer(request, response)
        except Exception as exc:
            self.scorer_failed(exc)
            return None

    def scorer_failed(self, exc: BaseException) -> None:
        self.once.error(
            "scorer", "tally: the scorer raised %s; the call counts by success alone",
            type(exc).__name__, exc_info=True,
        )

    def quality(self, score: Any) -> float | None:
        try:
            return grade(score)
        except ValueError:
            self.once.error("scorer-value", "tally: the scorer returned %r; it must be 0-1, "
                            "a bool or None", str(score)[:64])
            return None

    def send(self, attempt: Attempt, outcome: dict[str, Any]) -> None:
        target: Any = attempt.decision if attempt.decision is not None else attempt.decision_id
        if attempt.inferred and "inferred" not in outcome:
            outcome = {**outcome, "inferred": attempt.inferred}
        self.tally.telemetry(target, task_type=attempt.task_type, org=attempt.org, **outcome)

    # -- names ---------------------------------------------------------------

    def name_of(self, dep: Mapping[str, Any]) -> str:
        """The model a deployment serves: its pool name, else its price-map name."""
        name = self.pool_index().pool_name(dep)
        if name is not None:
            return name
        did = _host.deployment_id(dep)
        if did is not None and did in self._names_by_id:
            return self._names_by_id[did]
        facts, _ = load_price_map()
        name = _price_map_name(dep, facts)
        if name is None:
            raw = _model_string(dep)
            name = raw if isinstance(raw, str) and raw else "unknown"
        if did is not None:
            self._names_by_id[did] = name
        return name

    def name_of_id(self, did: Any) -> str | None:
        if not isinstance(did, str) or self.router is None:
            return None
        if did in self._names_by_id:
            return self._names_by_id[did]
        try:
            deployments = _host.all_deployments(self.router)
        except Exception:
            return None
        for dep in deployments:
            if _host.deployment_id(dep) == did:
                return self.name_of(dep)
        return None


def _plugin_survivors(healthy: list[Deployment], md: Mapping[str, Any]) -> list[Deployment]:
    """The deployments routing plugins left for this request (they ran before the hooks)."""
    kept = md.get(NARROWED_KEY)
    if not isinstance(kept, list):
        return healthy
    allowed = set(kept)
    survivors = [d for d in healthy if _model_string(d) in allowed]
    return survivors or healthy


def _usable(
    served: list[tuple[Deployment, str]],
    md: Mapping[str, Any],
    cooldowns: set[str],
) -> list[tuple[Deployment, str]]:
    """Deployments worth trying: not paused, not cooling down, not failed on this request.

    When that leaves none, the ones merely cooling down or failed are tried
    again rather than failing the call.
    """
    live = [(d, n, _host.deployment_id(d)) for d, n in served
            if not (d.get("model_info") or {}).get("blocked")]
    previous = md.get("previous_models") or ()
    failed = {p.get("deployment_id") for p in previous if isinstance(p, Mapping)}
    fresh = [x for x in live if x[2] not in failed] if failed else live
    best = [x for x in fresh if x[2] not in cooldowns] if cooldowns else fresh
    return [(d, n) for d, n, _ in best or fresh or live] or served


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _amount(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)
