"""Tally in the LiteLLM proxy (``litellm --config config.yaml``): one callbacks entry.

::

    model_list:
      - model_name: auto
        litellm_params: {model: gpt-4o-mini}
      - model_name: auto
        litellm_params: {model: openai/gpt-4o}
    litellm_settings:
      callbacks: ["tally_litellm.proxy.handler"]
    environment_variables:            # optional
      TALLY_FALLBACK: gpt-4o
      TALLY_HOME: /var/lib/tally

``handler`` is a LiteLLM ``CustomLogger``. LiteLLM offers every logger in
``litellm.callbacks`` the deployments a call may go to
(``async_filter_deployments``, after its own health, cooldown and routing
plugin checks): the handler keeps the one Tally picks, and its logging hooks
report every attempt. On the first request it builds its ``Tally`` from the
proxy's router (every deployment whose model has a known price joins the
pool) and stamps the proxy's responses with the ``x-tally-*`` headers.

Clients send the envelope in the request's ``metadata`` (with the OpenAI SDK:
``extra_body={"metadata": {"tally": {"task_type": "code-debug"}}}``).

Settings, read on the first request: the constructor's arguments, else the
environment (``TALLY_FALLBACK``, ``TALLY_TASK_TYPE``, ``TALLY_QUALITY_FLOOR``,
``TALLY_MODEL_GROUP``; state in ``TALLY_HOME``). For anything else (a scorer,
a custom pool) make your own handler in a module next to config.yaml::

    # tally_config.py                      callbacks: ["tally_config.handler"]
    from tally_litellm.proxy import TallyProxyHandler
    handler = TallyProxyHandler(fallback="gpt-4o", scorer=my_grader)
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from tally_core import Envelope, InvalidFieldError, ModelSpec, Tally
from tally_litellm._deployments import pool_from_router
from tally_litellm._log import OnceLog
from tally_litellm.callback import TallyCallback
from tally_litellm.strategy import Scorer, TallyStrategy

__all__ = ["TallyProxyHandler", "handler"]

_PROXY_MODULE = "litellm.proxy.proxy_server"


def proxy_router() -> Any:
    """The running proxy's ``litellm.Router``, or None outside the proxy.

    Looked up, never imported: importing the proxy server needs its extra
    dependencies and starts nothing useful here.
    """
    return getattr(sys.modules.get(_PROXY_MODULE), "llm_router", None)


class TallyProxyHandler(TallyCallback):
    """Routes and reports the LiteLLM proxy's calls through Tally. Name it in ``callbacks``.

    Parameters
    ----------
    models
        The pool. Default: every model the proxy's deployments serve whose
        price LiteLLM knows (``pool_from_router``).
    fallback, store, scorer, default_envelope, task_type
        As for ``Tally`` and ``TallyStrategy``.
    model_group
        Build the pool from this group's deployments only.
    tally_kwargs
        More ``Tally`` arguments (``seed``, ``explore``...).

    Nothing is built until the first request (or ``bind``): the proxy
    imports this module while it loads its config, before its router exists.

    >>> import litellm
    >>> h = TallyProxyHandler(fallback="gpt-4o", store=":memory:", seed=0)
    >>> router = litellm.Router(model_list=[
    ...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o-mini"}},
    ...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o"}}])
    >>> h.bind(router).mode
    'hooks'
    >>> h.close()
    """

    def __init__(
        self,
        *,
        models: list[str | ModelSpec] | None = None,
        fallback: str | None = None,
        store: Any = None,
        model_group: str | None = None,
        scorer: Scorer | None = None,
        default_envelope: Mapping[str, Any] | Envelope | None = None,
        task_type: str | None = None,
        **tally_kwargs: Any,
    ) -> None:
        CustomLogger.__init__(self)
        self.name = f"tally-proxy-{uuid.uuid4().hex[:12]}"
        self.models = models
        self.fallback = fallback
        self.store = store
        self.model_group = model_group
        self.scorer = scorer
        self.default_envelope = default_envelope
        self.task_type = task_type
        self.tally_kwargs = tally_kwargs
        self._bound: TallyStrategy | None = None
        self._failed_for: Any = None
        self._lock = threading.Lock()
        self._once = OnceLog()

    @property
    def strategy(self) -> TallyStrategy | None:
        """The strategy routing the proxy's calls, once bound."""
        return self._bound

    def bind(self, router: Any) -> TallyStrategy:
        """Route ``router``'s calls through Tally now; the proxy does it on its first request.

        Builds the ``Tally`` the first time; binding to another router later
        (the proxy rebuilt its router) keeps the same ``Tally``.
        """
        with self._lock:
            strategy = self._bound
            if strategy is not None and strategy.router is router:
                return strategy
            if strategy is None:
                strategy = self._build(router)
            else:
                strategy.uninstall()
            strategy.callback = self
            self._strategy = strategy
            strategy._warn_if_no_pool_model(router)
            strategy._attach(router, "hooks")
            self._bound = strategy
            return strategy

    def _build(self, router: Any) -> TallyStrategy:
        env = os.environ
        group = self.model_group or env.get("TALLY_MODEL_GROUP") or None
        pool = list(self.models) if self.models is not None else pool_from_router(router, group)
        if not pool:
            raise InvalidFieldError(
                "models", "no deployment of the proxy maps to a model with known prices; "
                "pass models=[...] (ModelSpec entries for custom models)"
            )
        defaults: dict[str, Any] = {}
        if isinstance(self.default_envelope, Envelope):
            defaults.update(self.default_envelope.model_dump(exclude_unset=True))
        elif self.default_envelope is not None:
            defaults.update(self.default_envelope)
        floor = env.get("TALLY_QUALITY_FLOOR")
        if floor and "quality_floor" not in defaults:
            try:
                defaults["quality_floor"] = float(floor)
            except ValueError:
                raise InvalidFieldError(
                    "TALLY_QUALITY_FLOOR", f"must be a number, got {floor!r}"
                ) from None
        tally = Tally(
            pool, fallback=self.fallback or env.get("TALLY_FALLBACK") or None,
            store=self.store, **self.tally_kwargs,
        )
        try:
            strategy = TallyStrategy(
                tally, scorer=self.scorer, default_envelope=defaults,
                task_type=self.task_type or env.get("TALLY_TASK_TYPE") or "general",
            )
        except Exception:
            tally.close()
            raise
        strategy._owns_tally = True
        return strategy

    def _current(self) -> TallyStrategy | None:
        """The strategy for the proxy's current router, bound on first use. Never raises."""
        strategy = self._bound
        router = proxy_router()
        if router is None or (strategy is not None and strategy.router is router):
            return strategy
        if router is self._failed_for:
            return None
        try:
            return self.bind(router)
        except Exception:
            self._failed_for = router
            self._once.error(
                "bind", "tally: could not set up routing for the proxy; LiteLLM routes every "
                "call", exc_info=True,
            )
            return None

    # LiteLLM passes these by keyword: the parameter names are its contract.

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        strategy = self._current()
        if strategy is None:
            return healthy_deployments
        return strategy._filter_deployments(model, healthy_deployments, messages, request_kwargs)

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if self._bound is not None:
            self._report(kwargs, response_obj, start_time, end_time, success=True)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if self._bound is not None:
            self._report(kwargs, response_obj, start_time, end_time, success=False)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if self._bound is not None:
            await self._areport(kwargs, response_obj, start_time, end_time, success=True)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if self._bound is not None:
            await self._areport(kwargs, response_obj, start_time, end_time, success=False)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """``TallyStrategy.flush`` of the bound strategy (True when not bound yet)."""
        return self._bound.flush(timeout) if self._bound is not None else True

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        """``TallyStrategy.aflush`` of the bound strategy (True when not bound yet)."""
        return await self._bound.aflush(timeout) if self._bound is not None else True

    def close(self, timeout: float = 5.0) -> None:
        """Flush, close the ``Tally`` and take this handler out of ``litellm.callbacks``."""
        with self._lock:
            strategy, self._bound, self._failed_for = self._bound, None, None
        if strategy is not None:
            strategy.close(timeout)

    def __repr__(self) -> str:
        return f"TallyProxyHandler({self.name}, {'bound' if self._bound else 'not bound'})"


handler = TallyProxyHandler()
"""What ``callbacks: ["tally_litellm.proxy.handler"]`` names; set up from the environment."""
