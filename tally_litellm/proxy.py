"""Tally in the LiteLLM proxy (``litellm --config config.yaml``): one line of config.

Either as a logger that routes through LiteLLM's deployment filter hook::

    litellm_settings:
      callbacks: ["tally_litellm.proxy.handler"]

or as a routing plugin (LiteLLM's own health, cooldown and routing strategy
then pick among the deployments of the model Tally chose)::

    router_settings:
      plugins: ["tally_litellm.proxy.plugin"]

with, for both::

    model_list:
      - model_name: auto
        litellm_params: {model: gpt-4o-mini}
      - model_name: auto
        litellm_params: {model: openai/gpt-4o}
    environment_variables:            # optional
      TALLY_FALLBACK: gpt-4o
      TALLY_HOME: /var/lib/tally
      # a fleet of proxies: one learned state, one call log
      TALLY_STORE: redis://cache:6379/0?prefix=prod
      TALLY_LEDGER: postgresql://tally@db:5432/tally

On the first request the handler builds its ``Tally`` from the proxy's
router (every deployment whose model has a known price joins the pool),
reports every attempt through its logging hooks, and sends each response's
``x-tally-decision-id``, ``x-tally-model`` and ``x-tally-phase`` headers
through LiteLLM's response-headers hook (plain and streamed responses).

**Tenancy.** Each request learns and routes under its authenticated
caller's org: the team id of its virtual key, else the key's hash (what the
proxy's auth puts in the request metadata). A client's
``metadata.tally.org`` is ignored (and logged once), so a key of team A can
never write into team B's learned state; ``allow_client_org=True`` (or
``TALLY_ALLOW_CLIENT_ORG=1``) lets clients choose, for a proxy whose callers
are trusted.

Clients send the rest of the envelope in the request's ``metadata`` (with
the OpenAI SDK: ``extra_body={"metadata": {"tally": {"task_type": "code-debug"}}}``).

Settings, read on the first request: the constructor's arguments, else the
environment (``TALLY_FALLBACK``, ``TALLY_TASK_TYPE``, ``TALLY_QUALITY_FLOOR``,
``TALLY_MODEL_GROUP``, ``TALLY_ALLOW_CLIENT_ORG``, ``TALLY_INFER=0`` to turn
off task-type inference; state in ``TALLY_HOME``). For several proxies
behind one load balancer, ``TALLY_STORE`` is the learned state they share
(a directory, or a ``redis://`` / ``rediss://`` / ``unix://`` URL with
``?prefix=`` for the deployment's keys, as ``Tally(store=...)`` takes; the
password may come from ``TALLY_REDIS_PASSWORD``) and ``TALLY_LEDGER`` the
call log (a SQLite path or a ``postgresql://`` URL, as ``Tally(ledger=...)``
takes); the spool, and the ledger unless ``TALLY_LEDGER`` names one, stay in
``TALLY_HOME``. A bad value fails the set-up with an error naming the
variable (passwords never shown), and LiteLLM routes every call meanwhile.
For anything else (a scorer, a custom pool) make your own handler in a
module next to config.yaml::

    # tally_config.py            callbacks: ["tally_config.handler"]
    from tally_litellm.proxy import TallyProxyHandler
    handler = TallyProxyHandler(fallback="gpt-4o", scorer=my_grader)
    plugin = handler.as_plugin()  # router_settings.plugins: ["tally_config.plugin"]
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from litellm.integrations.custom_logger import CustomLogger

from tally_core import Envelope, InvalidFieldError, ModelSpec, Tally
from tally_core.adapters import OnceLog
from tally_core.errors import StoreError, TallyError
from tally_core.ledger import Ledger, is_postgres_url, open_ledger
from tally_core.ledger.postgres import redact_url
from tally_core.stores import open_store
from tally_litellm._deployments import pool_from_router
from tally_litellm._routing import (
    DECISION_KEY,
    Mode,
    RoutingState,
    decision_headers,
    get_decision,
    log,
    plugin_signal,
)
from tally_litellm.callback import TallyCallback
from tally_litellm.plugin import TallyPlugin
from tally_litellm.strategy import Scorer

__all__ = ["TallyProxyHandler", "TallyProxyPlugin", "handler"]

_PROXY_MODULE = "litellm.proxy.proxy_server"
#: The shared learned state and call log of a fleet of proxies.
STORE_ENV = "TALLY_STORE"
LEDGER_ENV = "TALLY_LEDGER"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _hidden(text: str, value: str) -> str:
    """``text`` with ``value``'s password, if it has one, masked (a library's
    message may quote the URL it was given)."""
    try:
        secret = urlsplit(value).password if "://" in value else None
    except ValueError:  # no parsable URL: mask everything between :// and @
        secret = value.split("://", 1)[1].rpartition("@")[0] or None
    return text.replace(secret, "***") if secret else text


def _open_setting(name: str, value: str, opener: Callable[[str], Any]) -> Any:
    """``opener(value)`` for the environment variable ``name``; a bad value or an
    unreachable server raises naming the variable, never showing a password."""
    try:
        shown = redact_url(value) if "://" in value else value
    except ValueError:  # e.g. a port out of range
        shown = _hidden(value, value)
    try:
        return opener(value)
    except InvalidFieldError as exc:
        # The value's own fields (prefix, TLS files) keep their names.
        what = exc.args[1] if exc.field in ("store", "ledger") else str(exc)
        raise InvalidFieldError(name, _hidden(f"{what} (got {shown})", value)) from None
    except ValueError as exc:  # the client library's own parse of the URL
        raise InvalidFieldError(name, _hidden(f"{exc} (got {shown})", value)) from None
    except TallyError as exc:
        raise StoreError(_hidden(f"{name}={shown}: {exc}", value)) from None


def _ledger_at(value: str) -> Ledger:
    if "://" in value and not is_postgres_url(value):
        raise InvalidFieldError("ledger", "must be a file path or a postgresql:// URL")
    return open_ledger(value)


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
    allow_client_org
        Let a request's ``metadata.tally.org`` choose its org (default: the
        authenticated caller's team, else key).
    infer
        Infer task type and complexity from the messages (as for
        ``TallyStrategy``). Default: on unless ``TALLY_INFER=0``.
    tally_kwargs
        More ``Tally`` arguments (``seed``...).

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
        allow_client_org: bool | None = None,
        infer: bool | None = None,
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
        self.allow_client_org = allow_client_org
        self.infer = infer
        self.tally_kwargs = tally_kwargs
        self.state = None
        self._failed_for: Any = None
        self._lock = threading.Lock()
        self._once = OnceLog(log)
        self._plugin = TallyProxyPlugin(self)
        self._plugin_configured = False
        self._opened: list[Any] = []  # the store and ledger the environment named

    @property
    def plugin(self) -> TallyProxyPlugin:
        """This handler's routing plugin (``as_plugin()`` puts it to use)."""
        return self._plugin

    def as_plugin(self) -> TallyProxyPlugin:
        """This handler as the proxy's routing plugin (``router_settings.plugins``).

        The proxy resolves its plugins while it loads the config, before any
        request: the handler joins ``litellm.callbacks`` now, so it reports
        the very first call too, and leaves the deployment filter hook alone
        (the plugin routes).
        """
        self._plugin_configured = True
        self.register()
        return self._plugin

    @property
    def mode(self) -> Mode | None:
        return self.state.mode if self.state is not None else None

    @property
    def tally(self) -> Tally | None:
        return self.state.tally if self.state is not None else None

    @property
    def errors(self) -> dict[str, int]:
        counts = dict(self._once.counts)
        if self.state is not None:
            for k, v in self.state.once.counts.items():
                counts[k] = counts.get(k, 0) + v
        return counts

    def bind(self, router: Any, mode: Mode = "hooks") -> RoutingState:
        """Route ``router``'s calls through Tally now; the proxy does it on its first request.

        Builds the ``Tally`` the first time; binding to another router later
        (the proxy rebuilt its router) keeps the same ``Tally``.
        """
        with self._lock:
            state = self.state
            if state is not None and state.router is router:
                return state
            if state is None:
                state = self._build(router)
            state.warn_if_no_pool_model(router)
            state.bind(router, mode)
            self.state = state
            self.register()  # a plugin-only config lists no callback: report anyway
            return state

    def _build(self, router: Any) -> RoutingState:
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
        allow = self.allow_client_org
        if allow is None:
            allow = env.get("TALLY_ALLOW_CLIENT_ORG", "").strip().lower() in _TRUE
        infer = self.infer
        if infer is None:
            infer = env.get("TALLY_INFER", "1").strip().lower() not in _FALSE
        # The arguments win over the environment; what is opened here, the handler closes.
        store, kwargs, opened = self.store, dict(self.tally_kwargs), []
        try:
            if store is None and env.get(STORE_ENV, "").strip():
                store = _open_setting(STORE_ENV, env[STORE_ENV].strip(), open_store)
                opened.append(store)
            if kwargs.get("ledger") is None and env.get(LEDGER_ENV, "").strip():
                kwargs["ledger"] = _open_setting(LEDGER_ENV, env[LEDGER_ENV].strip(), _ledger_at)
                opened.append(kwargs["ledger"])
            tally = Tally(
                pool, fallback=self.fallback or env.get("TALLY_FALLBACK") or None,
                store=store, **kwargs,
            )
        except Exception:
            _close_all(opened)
            raise
        try:
            state = RoutingState(
                tally, scorer=self.scorer, default_envelope=defaults,
                task_type=self.task_type or env.get("TALLY_TASK_TYPE") or "general",
                org_from_auth=True, allow_client_org=allow, infer=infer,
            )
        except Exception:
            tally.close()
            _close_all(opened)
            raise
        self._opened = opened
        return state

    def current(self, mode: Mode) -> RoutingState | None:
        """The state for the proxy's current router, bound on first use. Never raises."""
        state = self.state
        router = proxy_router()
        if router is None or (state is not None and state.router is router):
            return state
        if router is self._failed_for:
            return None
        try:
            return self.bind(router, mode)
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
        if self._plugin_configured:
            return healthy_deployments  # the plugin routes; this is a logger only
        state = self.current("hooks")
        if state is None or state.mode != "hooks":
            return healthy_deployments
        return state.filter(model, healthy_deployments, messages, request_kwargs)

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        """The ``x-tally-*`` headers of a proxied response (plain or streamed)."""
        if self.state is None:
            return None
        try:
            info = get_decision(response) if response is not None else None
            if info is None and isinstance(data, Mapping):
                for key in ("metadata", "litellm_metadata"):
                    md = data.get(key)
                    found = md.get(DECISION_KEY) if isinstance(md, Mapping) else None
                    found = found if isinstance(found, Mapping) else plugin_signal(md)
                    if found is not None:
                        info = dict(found)
                        break
            return decision_headers(info) if info else None
        except Exception:
            self._once.error("headers", "tally: could not set the response headers",
                             exc_info=True)
            return None

    def flush(self, timeout: float | None = 5.0) -> bool:
        """``tally.flush`` of the bound Tally (True when not bound yet)."""
        return self.state.tally.flush(timeout) if self.state is not None else True

    async def aflush(self, timeout: float | None = 5.0) -> bool:
        """``flush`` for asyncio code."""
        return await self.state.tally.aflush(timeout) if self.state is not None else True

    def close(self, timeout: float = 5.0) -> None:
        """Flush, close the ``Tally`` and take this handler out of LiteLLM's callbacks."""
        with self._lock:
            state, self.state, self._failed_for = self.state, None, None
        if state is not None:
            state.tally.flush(timeout)
            state.unbind()
            state.release()
            state.tally.close(timeout)
            opened, self._opened = self._opened, []
            _close_all(opened)  # after the Tally: its last batches go to them
        self.unregister()

    def __repr__(self) -> str:
        return f"TallyProxyHandler({self.name}, {'bound' if self.state else 'not bound'})"


def _close_all(things: list[Any]) -> None:
    for thing in reversed(things):
        try:
            thing.close()
        except Exception:
            log.warning("tally: could not close %r", thing, exc_info=True)


class TallyProxyPlugin:
    """A ``TallyProxyHandler`` as a routing plugin (``router_settings.plugins``)."""

    def __init__(self, handler: TallyProxyHandler) -> None:
        self.handler = handler

    async def run(self, context: Any) -> Any:
        state = self.handler.current("plugin")
        if state is None or state.mode != "plugin":
            return context
        return await TallyPlugin(state).run(context)

    def __repr__(self) -> str:
        return f"TallyProxyPlugin({self.handler!r})"


handler = TallyProxyHandler()
"""What ``callbacks: ["tally_litellm.proxy.handler"]`` names; set up from the environment."""



def __getattr__(name: str) -> Any:
    # ``tally_litellm.proxy.plugin``, resolved when the proxy loads router_settings.plugins:
    # only then is the handler the proxy's plugin (a callbacks-only config never asks).
    if name == "plugin":
        return handler.as_plugin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
