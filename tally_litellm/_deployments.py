"""Map router deployments to model names in Tally's pool, and back."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from tally_core import ModelSpec
from tally_core.catalog import load_price_map

__all__ = ["DeploymentIndex", "deployment_id", "pool_from_router"]

log = logging.getLogger("tally.litellm")

Deployment = dict[str, Any]


def deployment_id(deployment: Mapping[str, Any]) -> str | None:
    """The router's id for a deployment (``model_info.id``)."""
    info = deployment.get("model_info")
    did = info.get("id") if isinstance(info, Mapping) else None
    return did if isinstance(did, str) else None


def _candidates(deployment: Mapping[str, Any]) -> list[str]:
    """Names a deployment may be known by, most specific first.

    ``model_info.tally_model`` lets a user name the pool model outright (for a
    fine-tune or an Azure deployment name); then the deployment's model; then
    its ``base_model`` (how Azure deployments say what they run).
    """
    params = deployment.get("litellm_params")
    info = deployment.get("model_info")
    params = params if isinstance(params, Mapping) else {}
    info = info if isinstance(info, Mapping) else {}
    out = []
    for value in (
        info.get("tally_model"),
        params.get("model"),
        info.get("base_model"),
        params.get("base_model"),
    ):
        if isinstance(value, str) and value and value not in out:
            out.append(value)
    return out


def _match(name: str, names: Collection[str], tails: Mapping[str, str]) -> str | None:
    if name in names:
        return name
    if "/" in name:
        tail = name.split("/", 1)[1]
        if tail in names:
            return tail
    return tails.get(name)


class DeploymentIndex:
    """Which pool model each deployment serves, for one set of pool names.

    Matching is exact first, then without the provider prefix
    (``openai/gpt-4o-mini`` serves ``gpt-4o-mini``), then the other way round
    (a pool name ``openai/gpt-4o`` is served by a deployment ``gpt-4o``).

    >>> idx = DeploymentIndex(["gpt-4o-mini", "gpt-4o"])
    >>> idx.pool_name({"litellm_params": {"model": "openai/gpt-4o-mini"},
    ...                "model_info": {"id": "a"}})
    'gpt-4o-mini'
    >>> idx.pool_name({"litellm_params": {"model": "gpt-4.1"}, "model_info": {"id": "b"}}) is None
    True
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        tails: dict[str, str | None] = {}
        for name in self.names:
            if "/" in name:
                tail = name.split("/", 1)[1]
                # Two pool names with one tail: the tail alone says nothing.
                tails[tail] = None if tail in tails else name
        self._tails = {t: n for t, n in tails.items() if n is not None}
        self._cache: dict[tuple[str | None, str | None], str | None] = {}

    def pool_name(self, deployment: Mapping[str, Any]) -> str | None:
        """The pool model this deployment serves, or None."""
        params = deployment.get("litellm_params")
        model = params.get("model") if isinstance(params, Mapping) else None
        key = (deployment_id(deployment), model if isinstance(model, str) else None)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = None
        for name in _candidates(deployment):
            found = _match(name, self.names, self._tails)
            if found is not None:
                break
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = found
        return found


def _price_map_name(deployment: Mapping[str, Any], facts: Mapping[str, Any]) -> str | None:
    for name in _candidates(deployment):
        if name in facts:
            return name
        if "/" in name and name.split("/", 1)[1] in facts:
            return name.split("/", 1)[1]
    return None


def _custom_spec(deployment: Mapping[str, Any]) -> ModelSpec | None:
    params = deployment.get("litellm_params")
    info = deployment.get("model_info")
    for source in (params, info):
        if not isinstance(source, Mapping):
            continue
        ic, oc = source.get("input_cost_per_token"), source.get("output_cost_per_token")
        model = params.get("model") if isinstance(params, Mapping) else None
        if isinstance(ic, (int, float)) and isinstance(oc, (int, float)) and isinstance(model, str):
            return ModelSpec(
                name=model,
                input_cost_per_mtok=float(ic) * 1e6,
                output_cost_per_mtok=float(oc) * 1e6,
            )
    return None


def pool_from_router(router: Any, model_group: str | None = None) -> list[str | ModelSpec]:
    """The Tally pool a router's deployments make up, one entry per distinct model.

    Each deployment becomes its LiteLLM price-map name (``openai/gpt-4o-mini``
    → ``gpt-4o-mini``); a deployment the price map does not know becomes a
    ``ModelSpec`` when its ``litellm_params`` (or ``model_info``) carry
    ``input_cost_per_token`` and ``output_cost_per_token``, and is left out,
    with a warning, otherwise. ``model_group`` limits the pool to one group.
    """
    facts, _ = load_price_map()
    pool: list[str | ModelSpec] = []
    seen: set[str] = set()
    from tally_litellm._host import all_deployments

    for dep in all_deployments(router):
        if not isinstance(dep, Mapping):
            continue
        if model_group is not None and dep.get("model_name") != model_group:
            continue
        info = dep.get("model_info")
        mode = info.get("mode") if isinstance(info, Mapping) else None
        if mode not in (None, "chat", "responses"):
            continue
        name = _price_map_name(dep, facts)
        entry: str | ModelSpec
        if name is not None:
            entry = name
        else:
            spec = _custom_spec(dep)
            if spec is None:
                log.warning(
                    "tally: deployment %r (%s) is not in LiteLLM's price map and has no "
                    "input_cost_per_token/output_cost_per_token; it is left out of the pool",
                    deployment_id(dep),
                    ", ".join(_candidates(dep)) or "no model",
                )
                continue
            entry, name = spec, spec.name
        if name not in seen:
            seen.add(name)
            pool.append(entry)
    return pool
