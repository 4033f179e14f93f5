"""Everything Tally reads from or registers on a ``litellm.Router``, in one place.

LiteLLM 1.110 replaced the Router's Python core with a facade over a Rust
core; 1.109 had moved it onto an internal core object first. The adapter
stands only on the entry points each line documents, and this module is the
one place that knows which line it is on:

==========================  ==================================  ================================
need                        1.109+ (entry points)               1.106-1.108
==========================  ==================================  ================================
custom routing strategy     ``register_plugin(strategy)``       ``set_custom_routing_strategy``
drop it again               ``apply(ChangeSet(settings=...))``  ``_reset_custom_routing_strategy``
a group's deployments       ``registry().deployments(group)``   ``get_model_list(model_name=)``
every deployment            ``registry().all()``                ``model_list``
routing plugins             ``registry().plugins("routing")``   ``routing_plugins``
cooldowns                   ``health().cooldowns``              ``cooldown_cache``
==========================  ==================================  ================================

Choosing a deployment inside the model group Tally picked has no entry point
on any version (once a custom strategy is registered, LiteLLM's own pick is
the strategy), so ``choose`` does it here: weighted by ``weight``/``rpm``/
``tpm`` like LiteLLM's ``simple-shuffle``, skipping what is paused or cooling
down.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "all_deployments",
    "choose",
    "cooldown_ids",
    "acooldown_ids",
    "deployment_id",
    "group_deployments",
    "has_entry_points",
    "register_strategy",
    "routing_plugins",
    "unregister_strategy",
]

Deployment = dict[str, Any]


def has_entry_points(router: Any) -> bool:
    """Whether the router has the 1.109+ entry points (``registry()``, ``health()``...)."""
    cls = type(router)
    known = _ENTRY_POINTS.get(cls)
    if known is None:
        known = _ENTRY_POINTS[cls] = callable(getattr(router, "registry", None)) and callable(
            getattr(router, "health", None)
        )
    return known


# By class: the facade answers attribute reads slowly, and the answer is the class's.
_ENTRY_POINTS: dict[type, bool] = {}


def deployment_id(deployment: Mapping[str, Any]) -> str | None:
    """The router's id for a deployment (``model_info.id``)."""
    info = deployment.get("model_info")
    did = info.get("id") if isinstance(info, Mapping) else None
    return did if isinstance(did, str) else None


# -- registration ---------------------------------------------------------------------------


def register_strategy(router: Any, strategy: Any) -> None:
    """Make ``strategy`` pick every deployment of ``router`` (sync and async)."""
    register = getattr(router, "register_plugin", None)
    if callable(register):
        register(strategy)
    else:
        router.set_custom_routing_strategy(strategy)


def unregister_strategy(router: Any, strategy: Any) -> None:
    """Give the router back its configured routing strategy.

    LiteLLM has no "unregister": re-initialising the routing strategy drops a
    custom one. On the entry-point routers that is ``apply`` with a routing
    strategy that differs from the current one, then the current one again
    with its arguments; on older routers the documented reset.
    """
    if has_entry_points(router) and callable(getattr(router, "apply", None)):
        from litellm.router_api import ChangeSet

        settings = router.settings()
        current = getattr(settings, "routing_strategy", None) or "simple-shuffle"
        try:
            args = dict(router.settings_dict().get("routing_strategy_args") or {})
        except Exception:
            args = {}
        other = "least-busy" if current != "least-busy" else "simple-shuffle"
        router.apply(ChangeSet(settings={"routing_strategy": other}))
        router.apply(ChangeSet(settings={"routing_strategy": current,
                                         "routing_strategy_args": args}))
        return
    reset = getattr(router, "_reset_custom_routing_strategy", None)
    if callable(reset):
        reset()
        return
    for attr in ("get_available_deployment", "async_get_available_deployment"):
        bound = router.__dict__.get(attr)
        if getattr(bound, "__self__", None) is strategy:
            delattr(router, attr)


# -- reading the registry -------------------------------------------------------------------


def group_deployments(router: Any, group: str) -> list[Deployment]:
    """The deployments that serve model group ``group`` (its aliases and wildcards too)."""
    if has_entry_points(router):
        found = router.registry().deployments(group, source="group")
    else:
        found = router.get_model_list(model_name=group)
    return [d for d in (found or ()) if isinstance(d, dict)]


def all_deployments(router: Any) -> list[Deployment]:
    """Every deployment of the router."""
    found = router.registry().all() if has_entry_points(router) else router.model_list
    return [d for d in (found or ()) if isinstance(d, dict)]


def routing_plugins(router: Any) -> Sequence[Any] | None:
    """The router's ``Router(plugins=[...])`` list, or None when this LiteLLM has none."""
    if has_entry_points(router):
        try:
            plugins = router.registry().plugins("routing")
        except Exception:
            return None
    else:
        plugins = getattr(router, "routing_plugins", None)
    return plugins if isinstance(plugins, (list, tuple)) else None


def _cooldown_cache(router: Any) -> Any:
    return router.health().cooldowns if has_entry_points(router) else router.cooldown_cache


def cooldown_ids(router: Any, ids: Iterable[str]) -> set[str]:
    """Which of these deployment ids are cooling down now."""
    wanted = list(ids)
    if not wanted:
        return set()
    active = _cooldown_cache(router).get_active_cooldowns(wanted, None)
    return {item[0] for item in active or () if isinstance(item, tuple) and item}


async def acooldown_ids(router: Any, ids: Iterable[str]) -> set[str]:
    """``cooldown_ids`` for async picks (the cooldown store may be Redis)."""
    wanted = list(ids)
    if not wanted:
        return set()
    active = await _cooldown_cache(router).async_get_active_cooldowns(wanted, None)
    return {item[0] for item in active or () if isinstance(item, tuple) and item}


# -- choosing within a group ----------------------------------------------------------------


def _weight(deployment: Mapping[str, Any]) -> float:
    params = deployment.get("litellm_params")
    params = params if isinstance(params, Mapping) else {}
    for key in ("weight", "rpm", "tpm"):
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return 1.0


def choose(deployments: Sequence[Deployment], rng: random.Random) -> Deployment:
    """One deployment, drawn in proportion to its ``weight`` (or ``rpm``/``tpm``), as
    LiteLLM's ``simple-shuffle`` does."""
    if len(deployments) == 1:
        return deployments[0]
    weights = [_weight(d) for d in deployments]
    if len(set(weights)) == 1:
        return rng.choice(list(deployments))
    return rng.choices(list(deployments), weights=weights, k=1)[0]
