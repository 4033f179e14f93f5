"""TallyPlugin: Tally as a LiteLLM routing plugin (``Router(plugins=[...])``).

A routing plugin gets a ``RoutingContext`` before LiteLLM picks a deployment
and may narrow ``candidate_models`` (the deployments' ``litellm_params.model``
strings); LiteLLM's health, cooldown, tag and order filters and its routing
strategy then pick among what is left. This one narrows to the deployments of
the model Tally chose, so Tally composes with other plugins (a policy plugin
listed before it narrows what Tally may choose from) and with LiteLLM's own
strategy, which picks among several deployments of that model.

What the context does not carry, and what follows:

- no ``tools`` or ``response_format``: ``tools_used`` and ``structure_type``
  are not inferred (give them in ``metadata["tally"]``), ``context_length`` is;
- a copy of the request metadata: the decision goes into
  ``metadata["routing_plugin_signals"]["tally"]`` (LiteLLM's channel for
  plugins), where the callback and the response stamp find it;
- only async calls run plugins: LiteLLM raises on a sync ``router.completion``
  when the router has any (use ``TallyStrategy.install(router)`` for those).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only for annotations: a LiteLLM without routing plugins still imports this module.
    from litellm.types.router import RoutingContext

    from tally_litellm.strategy import TallyStrategy

__all__ = ["SIGNAL_KEY", "TallyPlugin", "plugin_signal"]

SIGNAL_KEY = "tally"
# Where LiteLLM keeps a plugin narrowing for the filter that applies it.
_NARROWED_KEY = "_routing_plugin_candidate_models"


def plugin_signal(metadata: Any) -> Mapping[str, Any] | None:
    """The decision a ``TallyPlugin`` left in a request's metadata, or None."""
    signals = metadata.get("routing_plugin_signals") if isinstance(metadata, Mapping) else None
    info = signals.get(SIGNAL_KEY) if isinstance(signals, Mapping) else None
    return info if isinstance(info, Mapping) else None


def _model_string(deployment: Mapping[str, Any]) -> Any:
    params = deployment.get("litellm_params")
    return params.get("model") if isinstance(params, Mapping) else None


class TallyPlugin:
    """Narrows each call's candidate models to the one Tally picks. Get it from ``as_plugin()``.

    >>> import litellm
    >>> from tally_core import Tally
    >>> from tally_litellm import TallyStrategy
    >>> strategy = TallyStrategy(Tally(["gpt-4o-mini", "gpt-4o"], store=":memory:", seed=0))
    >>> router = litellm.Router(plugins=[strategy.as_plugin()], model_list=[
    ...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o-mini"}},
    ...     {"model_name": "auto", "litellm_params": {"model": "gpt-4o"}}])
    >>> strategy.install(router).mode
    'plugin'
    >>> strategy.close()
    """

    def __init__(self, strategy: TallyStrategy) -> None:
        self.strategy = strategy

    async def run(self, context: RoutingContext) -> RoutingContext:
        """LiteLLM's plugin hook. Never raises: on any error the candidates are left as they are."""
        original = list(context.candidate_models)
        try:
            await self._narrow(context)
        except Exception:
            self.strategy._once.error(
                "plugin", "tally: the routing plugin failed; LiteLLM routes this call",
                exc_info=True,
            )
        finally:
            try:
                _unstale(context, original)
            except Exception:
                self.strategy._once.error("plugin", "tally: could not widen a stale narrowing",
                                          exc_info=True)
        return context

    async def _narrow(self, context: RoutingContext) -> None:
        s = self.strategy
        md = context.metadata  # LiteLLM's copy of the request metadata
        if s.mode != "plugin" or s.router is None:
            s._once.error(
                "plugin-not-installed", "tally: the routing plugin runs on a router its "
                "strategy is not installed on; call strategy.install(router)",
            )
            return
        group_name = md.get("model_group")
        if not isinstance(group_name, str):
            return
        allowed = set(context.candidate_models)  # what earlier plugins left
        group = [d for d in s._group(group_name) if _model_string(d) in allowed]
        cooldowns = await s._acooldowns()
        choice = s._decide(group, md, context.raw_messages, {}, lambda: cooldowns)
        call_id = str(uuid.uuid4())
        if choice is None:
            # A group outside the pool: a fallback hop of a call Tally routed
            # is reported against that call's decision.
            prev = plugin_signal(md)
            before = s._attempts.get(prev.get("call_id")) if prev is not None else None
            if before is not None:
                attempt = s._attempt(
                    call_id, None, group_name, None, None, "litellm", decision=before.decision,
                    decision_id=before.decision_id, task_type=before.task_type, org=before.org,
                )
                context.signals[SIGNAL_KEY] = attempt.info()
            return
        deps = choice.deployments
        attempt = s._attempt(
            call_id, None, group_name, deps[0] if len(deps) == 1 else None, choice.model,
            choice.routed_by, decision=choice.decision, task_type=choice.task_type,
            org=choice.org,
        )
        context.signals[SIGNAL_KEY] = attempt.info()
        keep = [m for m in dict.fromkeys(_model_string(d) for d in deps) if isinstance(m, str)]
        if keep:
            context.candidate_models = keep

    def __repr__(self) -> str:
        return f"TallyPlugin({self.strategy!r})"


def _unstale(context: RoutingContext, original: list[str]) -> None:
    """Undo a narrowing an earlier hop of the same request left behind.

    LiteLLM stores a plugin's narrowing in the request metadata only when it
    removed a candidate, and never clears it: a retry or a fallback hop that
    narrows nothing would be filtered by the previous hop's list (and a hop
    to another group would find no deployment). The context's metadata is a
    shallow copy, so the stored list is the request's own: set it to this
    run's candidates.
    """
    stale = context.metadata.get(_NARROWED_KEY)
    if isinstance(stale, list) and len(context.candidate_models) >= len(original):
        stale[:] = context.candidate_models
