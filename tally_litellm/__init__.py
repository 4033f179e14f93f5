"""Tally for LiteLLM: a routing strategy for ``litellm.Router`` and its telemetry callback.

Two lines on a router you already have::

    from tally_litellm import TallyStrategy

    strategy = TallyStrategy.from_router(router, fallback="gpt-4o")   # pool = the deployments
    # or: TallyStrategy(Tally([...], fallback="gpt-4o")).install(router)
    resp = router.completion(model="auto", messages=msgs,
                             metadata={"tally": {"task_type": "code-debug", "quality_floor": 0.8}})
    get_decision(resp)["decision_id"]      # also in resp._hidden_params["tally"]

Every attempt is reported to Tally (tokens, latency, cost, success or the
error class, and a score if you give a ``scorer``); late quality goes to
``tally.feedback(decision_id, quality=...)``.

As a routing plugin: ``litellm.Router(..., plugins=[strategy.as_plugin()])``
then ``strategy.install(router)``. In the LiteLLM proxy's config.yaml:
``litellm_settings: {callbacks: ["tally_litellm.proxy.handler"]}`` or
``router_settings: {plugins: ["tally_litellm.proxy.plugin"]}``.

Tested on LiteLLM 1.106 (the lower bound) and the newest release; from 1.110
the ``Router`` is a facade over a Rust core, and the adapter uses only its
entry points (``register_plugin``, ``registry()``, ``health()``, ``apply``).
"""

from __future__ import annotations

from tally_litellm._cascade import acascade, cascade, judge
from tally_litellm._deployments import pool_from_router
from tally_litellm.callback import TallyCallback
from tally_litellm.plugin import TallyPlugin
from tally_litellm.strategy import DECISION_KEY, Scorer, TallyStrategy, get_decision

__all__ = [
    "DECISION_KEY",
    "acascade",
    "cascade",
    "judge",
    "Scorer",
    "TallyCallback",
    "TallyPlugin",
    "TallyStrategy",
    "get_decision",
    "pool_from_router",
]
