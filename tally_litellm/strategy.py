"""TallyStrategy: a ``litellm.Router`` routing strategy that asks Tally which model to call."""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from litellm.types.router import CustomRoutingStrategyBase

from tally_core import Envelope, InvalidFieldError, RouteDecision, Tally
from tally_core.catalog import load_price_map
from tally_core.envelope import coerce_envelope, normalise_task_type
from tally_litellm._attempts import Attempt, AttemptLog, RoutedBy
from tally_litellm._deployments import (
    DeploymentIndex,
    _price_map_name,
    deployment_id,
    pool_from_router,
)
from tally_litellm._envelope import ENVELOPE_KEY, _hashable, request_envelope
from tally_litellm._log import OnceLog, log
from tally_litellm.callback import TallyCallback
from tally_litellm.plugin import TallyPlugin, plugin_signal

__all__ = ["DECISION_KEY", "HEADER_PREFIX", "Scorer", "TallyStrategy", "get_decision"]

DECISION_KEY = "tally_decision"
HEADER_PREFIX = "x-tally-"

Scorer = Callable[
    [dict[str, Any], Any], "float | bool | None | Awaitable[float | bool | None]"
]
"""``scorer(request, response) -> float | bool | None`` (or an awaitable of one)."""

Deployment = dict[str, Any]
Mode = Literal["strategy", "plugin", "hooks"]

# Set while the strategy hands a request to LiteLLM's own selection, which
# for some routing strategies calls back into ``get_available_deployment``.
_DELEGATING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tally_litellm_delegating", default=False
)


def get_decision(response: Any) -> dict[str, Any] | None:
    """Tally's decision for a router response, from ``response._hidden_params["tally"]``.

    Keys: ``decision_id`` (pass it to ``tally.feedback``), ``model``, ``phase``,
    ``confidence``, ``estimated_cost_usd``, ``task_type``, ``org``,
    ``model_group``, ``deployment_id``, ``routed_by`` (``tally``, ``fail-open``
    or ``litellm`` for a fallback hop to a group outside the pool) and
    ``call_id``. None for a response Tally did not route.
    """
    hidden = getattr(response, "_hidden_params", None)
    info = hidden.get("tally") if isinstance(hidden, Mapping) else None
    return dict(info) if isinstance(info, Mapping) else None


class TallyStrategy(CustomRoutingStrategyBase):
    """Route each ``litellm.Router`` call to the model Tally picks, and report how it went.

    Parameters
    ----------
    tally
        The ``Tally`` to ask. Its pool names LiteLLM price-map models; each
        router deployment serves the pool model its ``litellm_params.model``
        names, with or without the provider prefix (set
        ``model_info["tally_model"]`` to say it outright).
    scorer
        ``scorer(request, response) -> float | bool | None`` grades each
        successful response (0-1; a bool counts as 1 or 0; None: no grade,
        the call counts by success alone). It may be ``async``. ``request``
        holds ``messages``, ``model`` (the pool model that served),
        ``model_group``, ``task_type``, ``decision_id``, ``metadata`` and
        ``optional_params``. It runs in LiteLLM's logging hook, after the
        caller has the response: keep a sync scorer fast, make a slow one
        (a judge model) async.
    default_envelope
        Envelope fields for every call (``quality_floor``, ``org``...).
    task_type
        The task type of calls that name none.

    The envelope of a call is ``task_type`` and ``default_envelope``, then
    what the request shows (``context_length`` from the messages' token count,
    ``tools_used`` from ``tools``, ``structure_type="json"`` for a JSON
    ``response_format``), then ``metadata["tally"]`` (a mapping of envelope
    fields, an ``Envelope`` or a task type).

    The decision shows up in three places: the request metadata
    (``metadata["tally_decision"]``, which every LiteLLM logger sees in
    ``kwargs["litellm_params"]["metadata"]``, and which the caller's own
    ``metadata`` dict holds after the call, also after it raised), the
    response (``response._hidden_params["tally"]``; ``get_decision(response)``)
    and the response headers (``x-tally-decision-id``, ``x-tally-model``,
    ``x-tally-phase`` in ``_hidden_params["additional_headers"]``, which the
    LiteLLM proxy sends to its clients). As a routing plugin (``as_plugin``)
    the request metadata holds it in ``metadata["routing_plugin_signals"]["tally"]``.

    Three ways in: ``install(router)`` (the router's custom routing strategy,
    sync and async), ``install(router, plugin=True)`` or ``as_plugin()`` (a
    ``Router(plugins=[...])`` routing plugin, async only) and, for the LiteLLM
    proxy, ``tally_litellm.proxy.handler`` (a logger that filters the
    deployments LiteLLM offers it).

    Routing fails open: if Tally raises, the call goes to a deployment of
    ``tally.fallback`` in the group, else wherever LiteLLM's own strategy
    sends it; the error is logged once and counted in ``errors``.

    >>> import litellm
    >>> router = litellm.Router(model_list=[
    ...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o-mini"}},
    ...     {"model_name": "auto", "litellm_params": {"model": "openai/gpt-4o"}}])
    >>> strategy = TallyStrategy.from_router(router, fallback="gpt-4o", store=":memory:", seed=0)
    >>> strategy.tally.catalog.names
    ['gpt-4o-mini', 'gpt-4o']
    >>> r = router.completion(model="auto", mock_response="hi",
    ...     messages=[{"role": "user", "content": "What is 2+2?"}],
    ...     metadata={"tally": {"task_type": "qa-simple", "quality_floor": 0.8}})
    >>> get_decision(r)["model"] in ("gpt-4o-mini", "gpt-4o")
    True
    >>> strategy.close()
    """

    def __init__(
        self,
        tally: Tally,
        *,
        scorer: Scorer | None = None,
        default_envelope: Mapping[str, Any] | Envelope | None = None,
        task_type: str = "general",
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
        self._defaults = _hashable(defaults)
        self._router: Any = None
        self._mode: Mode | None = None
        self._plugin: TallyPlugin | None = None
        self._headers_orig: Any = None
        self._owns_tally = False
        self._attempts = AttemptLog()
        self._once = OnceLog()
        self._rng = random.Random(tally.seed)
        self._index = DeploymentIndex(tally.catalog.names)
        self._index_key = tuple(tally.catalog.names)
        self._names_by_id: dict[str, str] = {}
        self.callback = TallyCallback(self)

    # -- setup ---------------------------------------------------------------

    @classmethod
    def from_router(
        cls,
        router: Any,
        *,
        fallback: str | None = None,
        store: Any = None,
        model_group: str | None = None,
        scorer: Scorer | None = None,
        default_envelope: Mapping[str, Any] | Envelope | None = None,
        task_type: str = "general",
        plugin: bool | None = None,
        **tally_kwargs: Any,
    ) -> TallyStrategy:
        """Build a ``Tally`` whose pool is the router's deployments, and install on it.

        The pool is ``pool_from_router(router, model_group)``; ``fallback``,
        ``store`` and ``tally_kwargs`` (``seed``, ``background``...) go to
        ``Tally``; ``plugin`` to ``install``. The strategy owns that ``Tally``:
        ``close()`` closes it.
        """
        pool = pool_from_router(router, model_group)
        if not pool:
            raise InvalidFieldError(
                "router", "no deployment maps to a model with known prices; build the Tally "
                "yourself with ModelSpec entries for custom models"
            )
        tally = Tally(pool, fallback=fallback, store=store, **tally_kwargs)
        strategy = cls(tally, scorer=scorer, default_envelope=default_envelope, task_type=task_type)
        strategy._owns_tally = True
        return strategy.install(router, plugin=plugin)

    def install(self, router: Any, *, plugin: bool | None = None) -> TallyStrategy:
        """Route the router's calls through Tally and register the telemetry callback.

        By default this becomes the router's custom routing strategy (sync and
        async calls). With ``plugin=True`` it runs as a routing plugin instead
        (``Router(plugins=[...])``, appended to ``router.routing_plugins``):
        LiteLLM's own filters and strategy still run, and pick among the
        deployments of the model Tally chose; LiteLLM runs plugins for async
        calls only. ``plugin=None`` picks plugin mode when the router already
        runs ``self.as_plugin()``.

        The callback goes into ``litellm.callbacks`` (LiteLLM has no
        per-router logger); it only acts on calls this strategy routed.
        Setting ``routing_strategy`` on the router later removes a custom
        strategy.
        """
        if self._router is not None and self._router is not router:
            raise InvalidFieldError(
                "router", "this strategy is installed on another router; make one per router"
            )
        plugins = getattr(router, "routing_plugins", None)
        mine = isinstance(plugins, list) and any(
            getattr(p, "strategy", None) is self for p in plugins
        )
        if plugin is None:
            plugin = mine
        if plugin and not isinstance(plugins, list):
            raise InvalidFieldError(
                "plugin", "this LiteLLM's Router has no routing plugins (Router(plugins=[...])); "
                "install without plugin=True"
            )
        if self._router is router:
            self.uninstall(keep_plugin=plugin)
        self._warn_if_no_pool_model(router)
        if plugin:
            assert isinstance(plugins, list)
            if not mine:
                plugins.append(self.as_plugin())
            self._attach(router, "plugin")
        else:
            if plugins:
                log.warning(
                    "tally: this router runs routing plugins %r; a custom routing strategy "
                    "bypasses them (install(router, plugin=True) keeps them)", plugins,
                )
            router.set_custom_routing_strategy(self)
            self._attach(router, "strategy")
        return self

    def as_plugin(self) -> TallyPlugin:
        """This strategy as a LiteLLM routing plugin, for ``Router(plugins=[...])``.

        Pass it to the router, then ``install(router)`` (which sees it there,
        registers the callback and gives the plugin the router's cooldowns)::

            router = litellm.Router(model_list=..., plugins=[strategy.as_plugin()])
            strategy.install(router)

        Always the same object for one strategy.
        """
        if self._plugin is None:
            self._plugin = TallyPlugin(self)
        return self._plugin

    def _warn_if_no_pool_model(self, router: Any) -> None:
        deployments = getattr(router, "model_list", None) or []
        index = self._pool_index()
        if not any(isinstance(d, Mapping) and index.pool_name(d) for d in deployments):
            log.warning(
                "tally: no deployment of this router serves a model in the pool %s; "
                "LiteLLM will route every call", self.tally.catalog.names,
            )

    def _attach(self, router: Any, mode: Mode) -> None:
        """Remember the router, stamp its responses, register the callback."""
        import litellm

        self._router, self._mode = router, mode
        original = getattr(router, "set_response_headers", None) if router is not None else None
        if original is not None and self._headers_orig is None:
            self._headers_orig = original
            router.set_response_headers = self._wrap_headers(original)
        if not any(cb is self.callback for cb in litellm.callbacks):
            litellm.callbacks.append(self.callback)

    def uninstall(self, *, keep_plugin: bool = False) -> None:
        """Give the router back its own routing and unregister the callback.

        In plugin mode the plugin is taken off ``router.routing_plugins``
        too, unless ``keep_plugin``.
        """
        import litellm

        router, self._router, self._mode = self._router, None, None
        if router is not None:
            for attr in ("get_available_deployment", "async_get_available_deployment"):
                bound = router.__dict__.get(attr)
                if getattr(bound, "__self__", None) is self:
                    delattr(router, attr)
            if self._headers_orig is not None and "set_response_headers" in router.__dict__:
                del router.set_response_headers
            plugins = getattr(router, "routing_plugins", None)
            if isinstance(plugins, list) and not keep_plugin:
                plugins[:] = [p for p in plugins if getattr(p, "strategy", None) is not self]
        self._headers_orig = None
        for name in ("callbacks", "success_callback", "failure_callback",
                     "_async_success_callback", "_async_failure_callback", "input_callback"):
            lst = getattr(litellm, name, None)
            if isinstance(lst, list):
                lst[:] = [cb for cb in lst if cb is not self.callback]

    def close(self, timeout: float = 5.0) -> None:
        """Wait for outstanding telemetry, uninstall, and close the Tally if this built it."""
        self.flush(timeout)
        self.uninstall()
        if self._owns_tally:
            self.tally.close(timeout)

    @property
    def router(self) -> Any:
        """The router this strategy is installed on, or None."""
        return self._router

    @property
    def mode(self) -> Mode | None:
        """How it routes: ``"strategy"``, ``"plugin"``, ``"hooks"`` (the proxy), or None."""
        return self._mode

    @property
    def errors(self) -> dict[str, int]:
        """Errors swallowed so far (routing that failed open, telemetry, scorer), by kind."""
        return dict(self._once.counts)

    # -- LiteLLM's hooks -----------------------------------------------------

    def get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Deployment:
        """The deployment for one attempt (``router.completion`` and friends)."""
        router = self._require_router()
        kw = request_kwargs if request_kwargs is not None else {}
        if _DELEGATING.get():
            return type(router).get_available_deployment(  # type: ignore[no-any-return]
                router, model=model, messages=messages, input=input,
                specific_deployment=specific_deployment, request_kwargs=kw,
            )
        chosen, opened = self._choose(
            model, messages, input, specific_deployment, kw, self._cooldowns
        )
        if chosen is not None:
            return chosen
        token = _DELEGATING.set(True)
        try:
            dep = type(router).get_available_deployment(
                router, model=model, messages=messages, input=input,
                specific_deployment=specific_deployment, request_kwargs=kw,
            )
        finally:
            _DELEGATING.reset(token)
        self._after_delegation(model, dep, kw, opened)
        return dep  # type: ignore[no-any-return]

    async def async_get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Deployment:
        """The deployment for one attempt (``router.acompletion`` and friends)."""
        router = self._require_router()
        kw = request_kwargs if request_kwargs is not None else {}
        if _DELEGATING.get():
            return await type(router).async_get_available_deployment(  # type: ignore[no-any-return]
                router, model=model, messages=messages, input=input,
                specific_deployment=specific_deployment, request_kwargs=kw,
            )
        cooldowns = await self._acooldowns()
        chosen, opened = self._choose(
            model, messages, input, specific_deployment, kw, lambda: cooldowns
        )
        if chosen is not None:
            return chosen
        token = _DELEGATING.set(True)
        try:
            dep = await type(router).async_get_available_deployment(
                router, model=model, messages=messages, input=input,
                specific_deployment=specific_deployment, request_kwargs=kw,
            )
        finally:
            _DELEGATING.reset(token)
        self._after_delegation(model, dep, kw, opened)
        return dep  # type: ignore[no-any-return]

    # -- choosing ------------------------------------------------------------

    def _require_router(self) -> Any:
        if self._router is None:
            raise RuntimeError(
                "TallyStrategy is not installed: call strategy.install(router) instead of "
                "router.set_custom_routing_strategy(strategy)"
            )
        return self._router

    def _cooldowns(self) -> Sequence[str]:
        from litellm.router_utils.cooldown_handlers import get_cooldown_deployments

        try:
            return get_cooldown_deployments(
                litellm_router_instance=self._router, parent_otel_span=None
            )
        except Exception:
            self._once.error("cooldowns", "tally: could not read the router's cooldowns",
                             exc_info=True)
            return ()

    async def _acooldowns(self) -> Sequence[str]:
        from litellm.router_utils.cooldown_handlers import async_get_cooldown_deployments

        try:
            return await async_get_cooldown_deployments(
                litellm_router_instance=self._router, parent_otel_span=None
            )
        except Exception:
            self._once.error("cooldowns", "tally: could not read the router's cooldowns",
                             exc_info=True)
            return ()

    def _group(self, model: str) -> list[Deployment]:
        router = self._router
        getter = getattr(router, "get_model_list", None)
        if getter is not None:
            found = getter(model_name=model)
        else:
            found = [d for d in router.model_list if d.get("model_name") == model]
        return [d for d in (found or []) if isinstance(d, dict)]

    def _pool_index(self) -> DeploymentIndex:
        names = tuple(self.tally.catalog.names)
        if names != self._index_key:
            self._index, self._index_key = DeploymentIndex(names), names
        return self._index

    def _decide(
        self,
        group: Sequence[Deployment],
        md: Mapping[str, Any],
        messages: Sequence[Any] | None,
        request_kwargs: Mapping[str, Any],
        cooldowns: Callable[[], Sequence[str]],
    ) -> _Choice | None:
        """What Tally picks among ``group``, or None when no deployment serves a pool model.

        Never raises: when Tally (or the envelope) fails, the choice is the
        fallback model's deployments (``routed_by="fail-open"``), or none at
        all, which leaves the pick to LiteLLM.
        """
        env: dict[str, Any] | None = None
        try:
            index = self._pool_index()
            in_pool = [(d, n) for d in group if (n := index.pool_name(d)) is not None]
            if not in_pool:
                return None  # a group outside the pool (a fallback hop, say)
            usable = _usable(in_pool, md, cooldowns)
            models = list(dict.fromkeys(n for _, n in usable))
            env = request_envelope(self._defaults, md.get(ENVELOPE_KEY), messages, request_kwargs)
            if set(models) != set(self._index_key):
                # Only models this group can serve (and has not just failed on).
                given = env.get("allowed_models")
                allowed = tuple(models) if given is None else tuple(m for m in given if m in models)
                env["allowed_models"] = allowed
            decision = self.tally.route(env)
            picks = [d for d, n in usable if n == decision.model]
            if not picks:
                raise LookupError(f"no deployment in this group serves {decision.model!r}")
            return _Choice(picks, decision.model, "tally", decision.task_type, decision.org,
                           decision)
        except Exception as exc:
            self._once.error(
                "route", "tally: routing failed (%s: %s); failing open to %s",
                type(exc).__name__, exc, self.tally.fallback, exc_info=True,
            )
            return self._fail_open(group, md, env, cooldowns)

    def _fail_open(
        self,
        group: Sequence[Deployment],
        md: Mapping[str, Any],
        env: Mapping[str, Any] | None,
        cooldowns: Callable[[], Sequence[str]],
    ) -> _Choice:
        """The fallback model's deployments, or none (LiteLLM picks), for a failed route."""
        task_type, org = self.task_type, "default"
        try:
            if env is not None:
                try:
                    e = coerce_envelope(env)
                    task_type, org = e.task_type, e.org
                except Exception:  # the envelope was what failed: use the defaults
                    pass
            fallback = self.tally.fallback
            index = self._pool_index()
            mine = [(d, fallback) for d in group if index.pool_name(d) == fallback]
            usable = _usable(mine, md, cooldowns) if mine else []
            return _Choice([d for d, _ in usable], fallback if usable else None, "fail-open",
                           task_type, org)
        except Exception:
            self._once.error("fail-open", "tally: could not pick the fallback deployment",
                             exc_info=True)
            return _Choice([], None, "fail-open", task_type, org)

    def _choose(
        self,
        model: str,
        messages: list[dict[str, str]] | None,
        input: Any,
        specific_deployment: bool | None,
        kw: dict[str, Any],
        cooldowns: Callable[[], Sequence[str]],
    ) -> tuple[Deployment | None, tuple[str, str] | None]:
        """The deployment Tally picked, or None to let LiteLLM pick. Never raises.

        The second item is set when routing failed open with no fallback
        deployment in the group: LiteLLM picks, and the attempt is recorded
        for ``(task_type, org)`` once it has.
        """
        if input is not None or specific_deployment:
            return None, None  # embeddings, or the caller named a deployment
        md = _metadata(kw)
        try:
            group = self._group(model)
        except Exception:
            self._once.error("route", "tally: could not read the router's deployments",
                             exc_info=True)
            return None, (self.task_type, "default")
        choice = self._decide(group, md, messages, kw, cooldowns)
        if choice is None:
            return None, None
        if not choice.deployments:
            return None, (choice.task_type, choice.org)
        dep = self._one(choice.deployments)
        self._record(kw, md, model, dep, choice.model, choice.routed_by,
                     decision=choice.decision, task_type=choice.task_type, org=choice.org)
        return dep, None

    def _one(self, deployments: Sequence[Deployment]) -> Deployment:
        return deployments[0] if len(deployments) == 1 else self._rng.choice(deployments)

    def _filter_deployments(
        self,
        model: str,
        healthy: list[Deployment],
        messages: Sequence[Any] | None,
        kw: dict[str, Any] | None,
    ) -> list[Deployment]:
        """Hooks mode (the proxy): keep only the deployment Tally picks. Never raises.

        LiteLLM calls this (through ``CustomLogger.async_filter_deployments``)
        with the group's deployments that passed its own health, cooldown and
        plugin checks; its routing strategy then picks among what is left.
        """
        if self._mode != "hooks" or kw is None or not healthy:
            return healthy
        try:
            if messages is None or kw.get("specific_deployment"):
                return healthy  # not a chat call, or the caller named a deployment
            md = _metadata(kw)
            group = _plugin_survivors(healthy, md)
            choice = self._decide(group, md, messages, kw, tuple)
            if choice is None:
                self._after_delegation(model, None, kw, None)
                return healthy
            if not choice.deployments:
                self._record(kw, md, model, None, None, "fail-open",
                             task_type=choice.task_type, org=choice.org)
                return healthy
            dep = self._one(choice.deployments)
            self._record(kw, md, model, dep, choice.model, choice.routed_by,
                         decision=choice.decision, task_type=choice.task_type, org=choice.org)
            return [dep]
        except Exception:
            self._once.error("route", "tally: could not filter the deployments",
                             exc_info=True)
            return healthy

    def _after_delegation(
        self, model: str, dep: Any, kw: dict[str, Any], opened: tuple[str, str] | None
    ) -> None:
        """Record an attempt LiteLLM routed, when Tally has a stake in it.

        That is a call that failed open, or a fallback hop (to a group outside
        the pool) of a request Tally routed: its outcome is reported against
        the request's decision, for the model that served it (``dep``, or,
        when None, the deployment the log event names).
        """
        try:
            if dep is not None and not isinstance(dep, dict):
                return
            md = _metadata(kw)
            name = self._name_of(dep) if dep is not None else None
            if opened is not None:
                task_type, org = opened
                self._record(kw, md, model, dep, name, "fail-open", task_type=task_type, org=org)
                return
            prev = md.get(DECISION_KEY)
            before = self._attempts.get(prev.get("call_id")) if isinstance(prev, Mapping) else None
            if before is not None and before.trace_id == kw.get("litellm_trace_id"):
                self._record(
                    kw, md, model, dep, name, "litellm", decision=before.decision,
                    decision_id=before.decision_id, task_type=before.task_type, org=before.org,
                )
        except Exception:
            self._once.error("record", "tally: could not record a LiteLLM-routed attempt",
                             exc_info=True)

    def _attempt(
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
            deployment_id=deployment_id(dep) if dep is not None else None,
            model=name,
            routed_by=routed_by,
            task_type=decision.task_type if decision is not None else (task_type or self.task_type),
            org=decision.org if decision is not None else (org or "default"),
            decision=decision,
            decision_id=decision.decision_id if decision is not None else decision_id,
        )
        self._attempts.add(attempt)
        return attempt

    def _record(
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
    ) -> None:
        call_id = kw.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            # Each attempt gets its own id, so its log event finds this record.
            call_id = kw["litellm_call_id"] = str(uuid.uuid4())
        attempt = self._attempt(
            call_id, kw.get("litellm_trace_id"), model_group, dep, name, routed_by,
            decision=decision, decision_id=decision_id, task_type=task_type, org=org,
        )
        md[DECISION_KEY] = attempt.info()

    def _name_of(self, dep: Mapping[str, Any]) -> str:
        """The model a deployment serves: its pool name, else its price-map name."""
        name = self._pool_index().pool_name(dep)
        if name is not None:
            return name
        did = deployment_id(dep)
        if did is not None and did in self._names_by_id:
            return self._names_by_id[did]
        facts, _ = load_price_map()
        name = _price_map_name(dep, facts)
        if name is None:
            params = dep.get("litellm_params")
            raw = params.get("model") if isinstance(params, Mapping) else None
            name = raw if isinstance(raw, str) and raw else "unknown"
        if did is not None:
            self._names_by_id[did] = name
        return name

    def _name_of_id(self, did: Any) -> str | None:
        if not isinstance(did, str) or self._router is None:
            return None
        for dep in list(getattr(self._router, "model_list", None) or []):
            if isinstance(dep, Mapping) and deployment_id(dep) == did:
                return self._name_of(dep)
        return None

    # -- the decision on the response ----------------------------------------

    def _wrap_headers(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def set_response_headers(*args: Any, **kwargs: Any) -> Any:
            response = await original(*args, **kwargs)
            try:
                self._annotate(response, kwargs.get("request_kwargs"))
            except Exception:
                self._once.error("annotate", "tally: could not put the decision on a response",
                                 exc_info=True)
            return response

        return set_response_headers

    def _annotate(self, response: Any, request_kwargs: Any) -> None:
        hidden = getattr(response, "_hidden_params", None)
        if not isinstance(hidden, dict):
            return
        attempt = self._attempts.get(hidden.get("litellm_call_id"))
        if attempt is None:
            md = _metadata(request_kwargs) if isinstance(request_kwargs, dict) else {}
            info = md.get(DECISION_KEY)
            if not isinstance(info, Mapping):
                info = plugin_signal(md)  # plugin mode: the decision is a routing signal
            attempt = self._attempts.get(info.get("call_id")) if info is not None else None
        if attempt is None:
            return
        info = attempt.info()
        if info["deployment_id"] is None or info["model"] is None:
            # LiteLLM picked the deployment (plugin mode, or a fail-open call).
            served = hidden.get("model_id")
            if isinstance(served, str):
                info["deployment_id"] = served
                info["model"] = info["model"] or self._name_of_id(served)
        hidden["tally"] = info
        headers = hidden.get("additional_headers")
        if not isinstance(headers, dict):
            headers = hidden["additional_headers"] = {}
        for key in ("decision_id", "model", "phase"):
            if info.get(key) is not None:
                headers[HEADER_PREFIX + key.replace("_", "-")] = str(info[key])

    # -- waiting for telemetry -----------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until LiteLLM has logged every attempt routed so far and Tally applied it.

        For code that ends right after its last call (scripts, tests). Sync
        calls log on LiteLLM's threads; after ``acompletion`` use ``aflush``.
        True when everything arrived within ``timeout``.
        """
        start = time.monotonic()
        ok = self._attempts.wait(start, timeout)
        return self._flush_tally(start, timeout) and ok

    def _flush_tally(self, start: float, timeout: float | None) -> bool:
        # Tally.flush answers False at once while its worker thread is being
        # started by the first telemetry call (on a LiteLLM logging thread):
        # ask again a few times before calling it a failure.
        for _ in range(20):
            if self.tally.flush(_left(start, timeout)):
                return True
            left = _left(start, timeout)
            if left is not None and left <= 0:
                return False
            time.sleep(0.005)
        return False

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        """``flush`` for asyncio code: LiteLLM logs async calls on the event loop."""
        start = time.monotonic()
        await asyncio.sleep(0)  # let LiteLLM's logging tasks enqueue
        try:
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), _left(start, timeout))
        except Exception:  # an older LiteLLM, or a timeout: poll below
            pass
        while self._attempts.open_since(start):
            left = _left(start, timeout)
            if left is not None and left <= 0:
                break
            await asyncio.sleep(0.01)
        ok = self._attempts.open_since(start) == 0
        done = await asyncio.to_thread(self._flush_tally, start, timeout)
        return done and ok

    def __repr__(self) -> str:
        installed = "installed" if self._router is not None else "not installed"
        return f"TallyStrategy({self.tally!r}, {installed})"


def _left(start: float, timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))


def _metadata(kw: dict[str, Any]) -> dict[str, Any]:
    """The request's metadata dict (the one the router and the loggers share)."""
    name = "litellm_metadata" if "litellm_metadata" in kw else "metadata"
    md = kw.get(name)
    if not isinstance(md, dict):
        md = kw[name] = {}
    return md


@dataclass(slots=True)
class _Choice:
    """What routing one attempt came to, before a deployment is drawn."""

    deployments: list[Deployment]  # the chosen model's usable ones; empty: LiteLLM picks
    model: str | None
    routed_by: RoutedBy
    task_type: str
    org: str
    decision: RouteDecision | None = None


def _plugin_survivors(healthy: list[Deployment], md: Mapping[str, Any]) -> list[Deployment]:
    """The deployments routing plugins left for this request (they ran before the hooks)."""
    kept = md.get("_routing_plugin_candidate_models")
    if not isinstance(kept, list):
        return healthy
    allowed = set(kept)
    survivors = [d for d in healthy if (d.get("litellm_params") or {}).get("model") in allowed]
    return survivors or healthy


def _usable(
    served: list[tuple[Deployment, str]],
    md: Mapping[str, Any],
    cooldowns: Callable[[], Sequence[str]],
) -> list[tuple[Deployment, str]]:
    """Deployments worth trying: not paused, not cooling down, not failed on this request.

    When that leaves none, the ones merely cooling down or failed are tried
    again rather than failing the call.
    """
    live = [(d, n, deployment_id(d)) for d, n in served
            if not (d.get("model_info") or {}).get("blocked")]
    previous = md.get("previous_models") or ()
    failed = {p.get("deployment_id") for p in previous if isinstance(p, Mapping)}
    cool = set(cooldowns()) if live else set()
    fresh = [x for x in live if x[2] not in failed] if failed else live
    best = [x for x in fresh if x[2] not in cool] if cool else fresh
    return [(d, n) for d, n, _ in best or fresh or live] or served
