"""TallyStrategy: a ``litellm.Router`` routing strategy that asks Tally which model to call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from litellm.types.router import CustomRoutingStrategyBase

from tally_core import Envelope, InvalidFieldError, Tally
from tally_litellm import _host
from tally_litellm._deployments import pool_from_router
from tally_litellm._routing import (
    DECISION_KEY,
    HEADER_PREFIX,
    Mode,
    RoutingState,
    get_decision,
    log,
)
from tally_litellm.callback import TallyCallback
from tally_litellm.plugin import TallyPlugin

__all__ = ["DECISION_KEY", "HEADER_PREFIX", "Scorer", "TallyStrategy", "get_decision"]

Scorer = Callable[
    [dict[str, Any], Any], "float | bool | None | Awaitable[float | bool | None]"
]
"""``scorer(request, response) -> float | bool | None`` (or an awaitable of one)."""

Deployment = dict[str, Any]


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
        The task type of calls that name none and whose messages do not
        show one with confidence.
    infer
        Read ``task_type`` and ``complexity`` off each call's messages when
        ``metadata["tally"]`` does not give them (``tally_core.infer``,
        in-process; no text is kept). False: every call without a task type
        is ``task_type``.

    The envelope of a call is ``task_type`` and ``default_envelope``, then
    what the request shows (``context_length`` from the messages' token count,
    ``tools_used`` from ``tools``, ``structure_type="json"`` for a JSON
    ``response_format``; with ``infer``, the task type and complexity its
    messages read as), then ``metadata["tally"]`` (a mapping of envelope
    fields, an ``Envelope`` or a task type). ``get_decision(response)
    ["inferred"]`` lists the fields that were inferred.

    The decision is on every response, plain or streamed:
    ``get_decision(response)`` (joined by LiteLLM's call id), which also
    stamps ``response._hidden_params["tally"]`` and the ``x-tally-*`` headers.
    LiteLLM's loggers see it in ``kwargs["litellm_params"]["metadata"]
    ["tally_decision"]``. ``tally.flush()`` waits for the outcomes of the
    calls routed so far (LiteLLM logs them on its own threads).

    Three ways in: ``install(router)`` (the router's custom routing
    strategy, sync and async), ``Router(plugins=[strategy.as_plugin()])`` then
    ``install(router)`` (a routing plugin, async only) and, for the LiteLLM
    proxy, ``tally_litellm.proxy``.

    Routing fails open: if Tally raises, the call goes to a deployment of
    ``tally.fallback`` in the group, else to a deployment of the group drawn
    as ``simple-shuffle`` would; the error is logged once and counted in
    ``errors``.

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
    >>> strategy.tally.flush()
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
        infer: bool = True,
    ) -> None:
        self.state = RoutingState(
            tally, scorer=scorer, default_envelope=default_envelope, task_type=task_type,
            infer=infer,
        )
        self._plugin: TallyPlugin | None = None
        self._owns_tally = False
        self.callback = TallyCallback(self.state)

    @property
    def tally(self) -> Tally:
        return self.state.tally

    @property
    def scorer(self) -> Scorer | None:
        return self.state.scorer

    @property
    def task_type(self) -> str:
        return self.state.task_type

    @property
    def default_envelope(self) -> dict[str, Any]:
        return dict(self.state.default_envelope)

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
        infer: bool = True,
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
        try:
            strategy = cls(tally, scorer=scorer, default_envelope=default_envelope,
                           task_type=task_type, infer=infer)
        except Exception:
            tally.close()
            raise
        strategy._owns_tally = True
        return strategy.install(router, plugin=plugin)

    def install(self, router: Any, *, plugin: bool | None = None) -> TallyStrategy:
        """Route the router's calls through Tally and register the telemetry callback.

        By default this becomes the router's custom routing strategy (sync and
        async calls; LiteLLM's ``register_plugin``). When the router was
        built with ``plugins=[strategy.as_plugin()]`` it runs as that routing
        plugin instead (``plugin=None`` sees it; ``plugin=True`` requires it):
        LiteLLM's own filters and strategy still run, and pick among the
        deployments of the model Tally chose, for async calls only.

        The callback goes into ``litellm.callbacks`` (LiteLLM has no
        per-router logger); it only acts on calls Tally routed.
        """
        state = self.state
        if state.router is not None and state.router is not router:
            raise InvalidFieldError(
                "router", "this strategy is installed on another router; make one per router"
            )
        plugins = _host.routing_plugins(router)
        mine = plugins is not None and any(p is self._plugin for p in plugins) and (
            self._plugin is not None
        )
        if plugin is None:
            plugin = mine
        if plugin and not mine:
            raise InvalidFieldError(
                "plugin", "the router does not run this strategy's plugin: build it with "
                "litellm.Router(..., plugins=[strategy.as_plugin()]) (LiteLLM reads its "
                "plugins when the router is built), or install without plugin=True"
            )
        if state.router is router:
            self.uninstall()
        state.warn_if_no_pool_model(router)
        if plugin:
            state.bind(router, "plugin")
        else:
            if plugins:
                log.warning(
                    "tally: this router runs routing plugins %r; a custom routing strategy "
                    "bypasses them (Router(plugins=[strategy.as_plugin()]) keeps them)",
                    list(plugins),
                )
            _host.register_strategy(router, self)
            state.bind(router, "strategy")
        self.callback.register()
        return self

    def as_plugin(self) -> TallyPlugin:
        """This strategy as a LiteLLM routing plugin, for ``Router(plugins=[...])``.

        Pass it to the router, then ``install(router)`` (which sees it there
        and registers the callback)::

            router = litellm.Router(model_list=..., plugins=[strategy.as_plugin()])
            strategy.install(router)

        Always the same object for one strategy. Until it is installed the
        plugin leaves every call as it is.
        """
        if self._plugin is None:
            self._plugin = TallyPlugin(self.state)
        return self._plugin

    def uninstall(self) -> None:
        """Give the router back its own routing and unregister the callback.

        As a custom strategy, the router's configured routing strategy is
        re-initialised (LiteLLM's way of dropping a custom one). As a plugin,
        the plugin stays in the router's list (LiteLLM fixes it when the
        router is built) and passes every call through.
        """
        state = self.state
        router, mode = state.router, state.mode
        state.unbind()
        if router is not None and mode == "strategy":
            try:
                _host.unregister_strategy(router, self)
            except Exception:
                state.once.error("uninstall", "tally: could not reset the router's routing "
                                 "strategy", exc_info=True)
        self.callback.unregister()

    def close(self, timeout: float = 5.0) -> None:
        """Wait for outstanding telemetry, uninstall, and close the Tally if this built it."""
        self.flush(timeout)
        self.uninstall()
        self.state.release()
        if self._owns_tally:
            self.tally.close(timeout)

    @property
    def router(self) -> Any:
        """The router this strategy is installed on, or None."""
        return self.state.router

    @property
    def mode(self) -> Mode | None:
        """How it routes: ``"strategy"``, ``"plugin"``, ``"hooks"`` (the proxy), or None."""
        return self.state.mode

    @property
    def errors(self) -> dict[str, int]:
        """Errors swallowed so far (routing that failed open, telemetry, scorer), by kind."""
        return dict(self.state.once.counts)

    # -- LiteLLM's hooks (called by keyword: the names are its contract) -----

    def get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Deployment:
        """The deployment for one attempt (``router.completion`` and friends)."""
        state = self.state
        kw = request_kwargs if request_kwargs is not None else {}
        group = state.group(model)
        cooldowns = self._cooldowns(group)
        return state.pick(model, messages, input, specific_deployment, kw, group, cooldowns)

    async def async_get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> Deployment:
        """The deployment for one attempt (``router.acompletion`` and friends)."""
        state = self.state
        kw = request_kwargs if request_kwargs is not None else {}
        group = state.group(model)
        cooldowns = await self._acooldowns(group)
        return state.pick(model, messages, input, specific_deployment, kw, group, cooldowns)

    def _cooldowns(self, group: list[Deployment]) -> set[str]:
        try:
            return _host.cooldown_ids(self.state.router, _ids(group))
        except Exception:
            self.state.once.error("cooldowns", "tally: could not read the router's cooldowns",
                                  exc_info=True)
            return set()

    async def _acooldowns(self, group: list[Deployment]) -> set[str]:
        try:
            return await _host.acooldown_ids(self.state.router, _ids(group))
        except Exception:
            self.state.once.error("cooldowns", "tally: could not read the router's cooldowns",
                                  exc_info=True)
            return set()

    # -- waiting for telemetry -----------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """``tally.flush``: every attempt routed so far reported and applied, within ``timeout``.

        For code that ends right after its last call (scripts, tests). After
        ``acompletion`` use ``await strategy.aflush()`` (LiteLLM logs async
        calls on the event loop, which a blocking flush would hold up).
        """
        return self.tally.flush(timeout)

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        """``flush`` for asyncio code: waits on a thread so LiteLLM's logging tasks run."""
        start = time.monotonic()
        try:
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
        except Exception:  # an older LiteLLM: the wait below covers it
            pass
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return await self.tally.aflush(left)

    def __repr__(self) -> str:
        installed = "installed" if self.state.router is not None else "not installed"
        return f"TallyStrategy({self.tally!r}, {installed})"


def _ids(group: list[Deployment]) -> list[str]:
    return [i for d in group if (i := _host.deployment_id(d)) is not None]
