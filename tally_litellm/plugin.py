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
- no call id: the decision goes into ``metadata["routing_plugin_signals"]
  ["tally"]`` (LiteLLM's channel for plugins), and the logger binds it to the
  call's id before the provider is called;
- only async calls run plugins: LiteLLM raises on a sync ``router.completion``
  when the router has any (use ``TallyStrategy.install(router)`` for those).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tally_core import NoCandidateError
from tally_litellm import _host
from tally_litellm._routing import NARROWED_KEY, SIGNAL_KEY, RoutingState, plugin_signal

if TYPE_CHECKING:
    # Only for annotations: a LiteLLM without routing plugins still imports this module.
    from litellm.types.router import RoutingContext

__all__ = ["SIGNAL_KEY", "TallyPlugin", "plugin_signal"]


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

    def __init__(self, state: RoutingState) -> None:
        self.state = state

    async def run(self, context: RoutingContext) -> RoutingContext:
        """LiteLLM's plugin hook. Never raises: on any error the candidates are left as they are."""
        state = self.state
        original = list(context.candidate_models)
        try:
            if state.mode != "plugin" or state.router is None:
                state.once.error(
                    "plugin-not-installed", "tally: the routing plugin runs on a router its "
                    "strategy is not installed on; call strategy.install(router)",
                )
                return context  # pass every call through
            cooldowns = await _acooldowns(state, context)
            state.narrow(context, cooldowns)
        except NoCandidateError as exc:
            state.once.error("compliance", "tally: %s", str(exc)[:300])
            return context  # narrowed to nothing: never to a forbidden model
        except Exception:
            state.once.error(
                "plugin", "tally: the routing plugin failed; LiteLLM routes this call",
                exc_info=True,
            )
        finally:
            try:
                _unstale(context, original)
            except Exception:
                state.once.error("plugin", "tally: could not widen a stale narrowing",
                                 exc_info=True)
        return context

    def __repr__(self) -> str:
        return f"TallyPlugin({self.state.tally!r})"


async def _acooldowns(state: RoutingState, context: Any) -> set[str]:
    group = context.metadata.get("model_group")
    if not isinstance(group, str):
        return set()
    try:
        ids = [i for d in state.group(group) if (i := _host.deployment_id(d)) is not None]
        return await _host.acooldown_ids(state.router, ids)
    except Exception:
        state.once.error("cooldowns", "tally: could not read the router's cooldowns",
                         exc_info=True)
        return set()


def _unstale(context: Any, original: list[str]) -> None:
    """Undo a narrowing an earlier hop of the same request left behind.

    LiteLLM stores a plugin's narrowing in the request metadata only when it
    removed a candidate, and never clears it: a retry or a fallback hop that
    narrows nothing would be filtered by the previous hop's list (and a hop
    to another group would find no deployment). Set the stored list (the
    request's own) to this run's candidates.
    """
    stale = context.metadata.get(NARROWED_KEY)
    if isinstance(stale, list) and len(context.candidate_models) >= len(original):
        stale[:] = context.candidate_models
